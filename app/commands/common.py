"""What every subcommand shares: the model-loading flags and one way to build `Settings`.

Flags are stored under the name of the `Settings` field they override (`--backend` ->
`engine`), so `settings_from_args` needs no per-command mapping: the `LAMINI_*` environment
first, then every flag the user actually gave.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from pydantic import ValidationError

from app.core.engine_kinds import EngineKind
from app.core.errors import ConfigurationError
from app.core.families import family_names
from app.settings import Settings
from conversion.publish import QUANTIZATIONS


def add_model_and_instruction(parser: argparse.ArgumentParser) -> None:
    """The `MODEL "instruction"` positionals of the commands that format one instruction."""
    parser.add_argument("model", metavar="MODEL", help="hub id, checkpoint dir or twin:<hub id>")
    parser.add_argument("instruction", metavar="INSTRUCTION", help="the user's instruction")


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """`--family`, `--backend`, `--device`, `--threads`: how a model is recognised and run."""
    parser.add_argument(
        "--family",
        dest="family",
        metavar="NAME",
        help=f"the model's family when it cannot be detected ({', '.join(family_names())})",
    )
    parser.add_argument(
        "--backend",
        dest="engine",
        choices=["auto", *(kind.value for kind in EngineKind)],
        help="engine that runs the model (default: LAMINI_ENGINE or auto)",
    )
    parser.add_argument(
        "--device", dest="device", choices=["auto", "cpu", "cuda"], help="device (default: auto)"
    )
    parser.add_argument(
        "--threads",
        dest="intra_threads",
        type=non_negative_int,
        metavar="N",
        help="threads per batch computation (0 = one per core; default: the engine's choice)",
    )
    parser.add_argument(
        "--inter-threads",
        dest="inter_threads",
        type=positive_int,
        metavar="N",
        help="batches computed side by side (CTranslate2 replicas; default: the engine's choice)",
    )


def add_quantization_option(parser: argparse.ArgumentParser) -> None:
    """`--quantization`: which precision of a converted model to use (or make)."""
    parser.add_argument(
        "--quantization",
        dest="quantization",
        # bfloat16: the continuous engine's (it runs the checkpoint, no conversion).
        choices=sorted({q for names in QUANTIZATIONS.values() for q in names} | {"bfloat16"}),
        help="weights precision (default: int8 for ct2 on CPU, float16 on CUDA, else float32)",
    )


def add_store_option(parser: argparse.ArgumentParser) -> None:
    """`--store DIR`: where converted models live."""
    parser.add_argument(
        "--store",
        dest="store_dir",
        metavar="DIR",
        help="model store directory (default: LAMINI_STORE_DIR or the user cache)",
    )


def settings_from_args(args: argparse.Namespace) -> Settings:
    """`Settings` from the environment with every flag the user gave on top."""
    given = {
        name: value
        for name, value in vars(args).items()
        if name in Settings.model_fields and value is not None
    }
    try:
        return Settings(**given)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'settings'}: {error['msg']}"
            for error in exc.errors()
        )
        raise ConfigurationError(
            f"invalid setting ({problems}); check the flags and LAMINI_* variables"
        ) from None


def _number(convert: Callable[[str], float], check: Callable[[float], bool], wanted: str):
    """An argparse `type` that converts a flag value and rejects values outside a range."""

    def parse(text: str) -> float:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {wanted}") from None
        if not check(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not {wanted}")
        return value

    return parse


positive_int = _number(int, lambda v: v >= 1, "a whole number >= 1")
non_negative_int = _number(int, lambda v: v >= 0, "a whole number >= 0")
positive_float = _number(float, lambda v: v > 0 and v != float("inf"), "a number > 0")
non_negative_float = _number(float, lambda v: 0 <= v != float("inf"), "a number >= 0")
probability = _number(float, lambda v: 0 < v <= 1, "a number in (0, 1]")
