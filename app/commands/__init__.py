"""Subcommands of `lamini-serve`, one module each, and the table that names and describes them.

Each module has `add_arguments(parser)` (its flags) and `run(args)` (the command itself, taking
the parsed arguments and returning an exit status).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from types import ModuleType

from app.commands import convert, families, generate, models, prompt, serve, twin


@dataclass(frozen=True)
class Command:
    """A subcommand: its module, its line in `lamini-serve --help`, and its own description."""

    module: ModuleType
    help: str
    description: str | None = None

    @property
    def name(self) -> str:
        return self.module.__name__.rsplit(".", 1)[-1]

    def register(self, subcommands: argparse._SubParsersAction) -> None:
        parser = subcommands.add_parser(self.name, help=self.help, description=self.description)
        self.module.add_arguments(parser)
        parser.set_defaults(run=self.module.run)


COMMANDS: tuple[Command, ...] = (
    Command(families, "list model families and their hub ids"),
    Command(
        twin,
        "write a random-weight twin checkpoint of a zoo model",
        "Write a Hugging Face checkpoint directory with the architecture and tokenizer of "
        "MODEL_ID and random weights.",
    ),
    Command(
        prompt,
        "print the exact model input for an instruction",
        "Print the instruction wrapped in the model family's prompt format, exactly as the "
        "tokenizer receives it (no trailing newline is added).",
    ),
    Command(
        generate,
        "generate an answer to one instruction",
        "Format INSTRUCTION for the model's family, generate, and print the tidied answer. "
        "Sampling follows the family's model card unless flags say otherwise.",
    ),
    Command(convert, "convert a model for CTranslate2 or ONNX Runtime into the model store"),
    Command(models, "list the model store's entries"),
    Command(
        serve,
        "serve models over HTTP (TGI-compatible API)",
        "Serve one or more models; the first is the default. Every flag overrides its LAMINI_* "
        "environment variable.",
    ),
)
