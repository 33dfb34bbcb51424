"""`lamini-serve prompt MODEL "instruction"`: show the exact text (and tokens) a model gets.

The prompt format is the most common reason a small instruction model "doesn't work", so the
formatted input is one command away, byte for byte.
"""

from __future__ import annotations

import argparse
import sys

from app.commands.common import (
    add_model_and_instruction,
    add_model_options,
    settings_from_args,
)
from app.engines.base import encode_prompt
from app.engines.loading import load_tokenizer
from model_store.sources import resolve_family, resolve_source


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_and_instruction(parser)
    parser.add_argument(
        "--tokens",
        action="store_true",
        help="also print the token ids on a second line (loads the model's tokenizer)",
    )
    add_model_options(parser)


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    family = resolve_family(
        args.model, twin_cache_dir=settings.twin_cache_dir, family=settings.family
    )
    text = family.prompt_format.wrap(args.instruction)
    output = text
    if args.tokens:
        source = resolve_source(
            args.model, twin_cache_dir=settings.twin_cache_dir, family=family.name
        )
        ids = encode_prompt(load_tokenizer(source.checkpoint_dir, family), family, text)
        output += "\n" + " ".join(str(token_id) for token_id in ids) + "\n"
    sys.stdout.write(output)
    sys.stdout.flush()
    return 0
