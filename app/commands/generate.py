"""`lamini-serve generate MODEL "instruction"`: one answer from the command line.

The same path the server takes for one request - the server's own preparation step (family
prompt format, tokenizer, limits, stop sequences), the engine, tidying - so a model can be
checked without starting a server. Sampling defaults to what the
family's model card recommends; `--greedy` makes the output reproducible.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

from app.commands.common import (
    add_model_and_instruction,
    add_model_options,
    add_quantization_option,
    add_store_option,
    non_negative_int,
    positive_float,
    positive_int,
    probability,
    settings_from_args,
)
from app.core.errors import ConfigurationError
from app.core.families import Family
from app.engines.base import EngineRequest, Generation, SamplingParams
from app.serving.preparation import (
    GenerationOptions,
    PreparationLimits,
    PreparedRequest,
    RequestPreparer,
)
from model_store.resolver import LoadedModel, load_model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_and_instruction(parser)
    add_model_options(parser)
    add_quantization_option(parser)
    add_store_option(parser)
    parser.add_argument(
        "--max-new-tokens", type=positive_int, metavar="N", help="most tokens to generate"
    )
    parser.add_argument("--greedy", action="store_true", help="greedy decoding (reproducible)")
    parser.add_argument("--seed", type=non_negative_int, metavar="N", help="sampling seed")
    parser.add_argument("--temperature", type=positive_float, metavar="T")
    parser.add_argument("--top-p", type=probability, metavar="P")
    parser.add_argument("--top-k", type=non_negative_int, metavar="K", help="0 = off")
    parser.add_argument("--repetition-penalty", type=positive_float, metavar="R")
    parser.add_argument(
        "--stop",
        action="append",
        default=[],
        metavar="TEXT",
        help="stop when this text is generated (repeatable)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def sampling_from_args(family: Family, args: argparse.Namespace) -> SamplingParams:
    """The model card's recommended settings with the user's flags on top."""
    card = family.recommended
    return SamplingParams(
        do_sample=card.do_sample and not args.greedy,
        temperature=args.temperature if args.temperature is not None else card.temperature,
        top_p=args.top_p if args.top_p is not None else card.top_p,
        top_k=args.top_k if args.top_k is not None else 0,
        repetition_penalty=(
            args.repetition_penalty
            if args.repetition_penalty is not None
            else card.repetition_penalty
        ),
        seed=args.seed,
    )


def _prepared(loaded: LoadedModel, args: argparse.Namespace) -> PreparedRequest:
    """The instruction prepared exactly as the server prepares a request (`RequestPreparer`):
    family format, stop sequences, and the same errors for a prompt the model cannot take."""
    family = loaded.source.family
    limits = PreparationLimits(
        max_stop_sequences=len(args.stop),
        default_max_new_tokens=family.recommended.max_new_tokens,
    )
    options = GenerationOptions(
        sampling=sampling_from_args(family, args),
        max_new_tokens=args.max_new_tokens,
        stop=tuple(args.stop),
    )
    return RequestPreparer(loaded.engine, limits).prepare(args.instruction, options)


def _as_json(
    loaded: LoadedModel,
    model_input: str,
    generation: Generation,
    tidied: str,
    generate_seconds: float,
) -> str:
    return json.dumps(
        {
            "model": loaded.name,
            "family": loaded.source.family.name,
            "engine": loaded.engine.info.kind.value,
            "quantization": loaded.engine.info.quantization,
            "model_input": model_input,
            "prompt_tokens": len(generation.prompt_ids),
            "text": generation.text,
            "tidied_text": tidied,
            "tokens": [dataclasses.asdict(token) for token in generation.tokens],
            "finish_reason": generation.finish_reason.value,
            "stop_sequence": generation.stop_sequence,
            "timings": {
                "load_seconds": loaded.load_seconds,
                "convert_seconds": loaded.convert_seconds,
                "generate_seconds": generate_seconds,
            },
        },
        ensure_ascii=False,
    )


def run(args: argparse.Namespace) -> int:
    if any(not stop for stop in args.stop):
        raise ConfigurationError("--stop needs a non-empty text")
    loaded = load_model(args.model, settings_from_args(args))
    family = loaded.source.family
    prepared = _prepared(loaded, args)
    request = EngineRequest(prepared.prompt_ids, prepared.max_new_tokens, prepared.stop)
    started = time.perf_counter()
    generation = loaded.engine.generate([request], prepared.sampling)[0]
    generate_seconds = time.perf_counter() - started
    tidied = family.prompt_format.tidy(generation.text)
    if args.json:
        model_input = family.prompt_format.wrap(args.instruction)
        print(_as_json(loaded, model_input, generation, tidied, generate_seconds))
    else:
        print(tidied)
    return 0
