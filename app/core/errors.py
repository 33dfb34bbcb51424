"""Typed errors raised inside lamini-serve; the CLI and the HTTP API map them to messages."""

from __future__ import annotations


class LaminiError(Exception):
    """Base class: every error a user can act on. The message says what to do next."""


class ConfigurationError(LaminiError):
    """A setting (LAMINI_* environment variable or command-line flag) has an invalid value."""


class FamilyResolutionError(LaminiError):
    """The family of a model could not be decided (unknown id, unknown or ambiguous checkpoint)."""


class ModelSourceError(LaminiError):
    """A model could not be found or downloaded (missing directory, offline hub, unknown id)."""


class ConversionError(LaminiError):
    """Converting a checkpoint to an engine format failed or is not supported."""


class StoreEntryError(LaminiError):
    """A model store entry is missing, incomplete or corrupted."""


class EngineUnavailableError(LaminiError):
    """The requested engine cannot run this family or is not installed."""


class AccessConfigError(LaminiError):
    """The API key configuration cannot be used (unreadable or malformed keys file)."""
