"""Subcommands of `lamini-serve`. Each module has `register(subparsers)` which adds its parser
and sets `run` (a function taking the parsed args and returning an exit status)."""

from __future__ import annotations

from types import ModuleType

from app.commands import convert, families, generate, models, prompt, serve, twin

COMMANDS: tuple[ModuleType, ...] = (families, twin, prompt, generate, convert, models, serve)
