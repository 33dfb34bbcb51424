"""`lamini-serve` command line: one subcommand per module in `app/commands/`.

Every command builds its configuration the same way: `Settings` from the `LAMINI_*`
environment, then the flags the user gave on top. Errors a user can fix print one clear line on
stderr and exit with status 2; nothing prints a traceback for a bad model name.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from app.commands import COMMANDS
from app.core.errors import LaminiError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lamini-serve",
        description="Serve LaMini-LM, OPT-IML and flan-T5 instruction models fast.",
    )
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(subcommands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except LaminiError as exc:
        print(f"lamini-serve: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`lamini-serve generate ... | head`): not an error of ours.
        # Point stdout at devnull so the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
