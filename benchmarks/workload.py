"""The workload every system runs: real user instructions, wrapped by the family's prompt format.

Instructions come from the self-instruct user-oriented set (shared/eval); a request is the
instruction and its first instance's input joined by a blank line, as that set's README says.
Output length is forced (min = max new tokens) wherever a system allows it, so every system
generates the same number of tokens from random-weight twins.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from app.core.errors import LaminiError
from app.core.families import Family


class WorkloadError(LaminiError):
    """The instruction file is missing or has no usable instruction."""


@dataclass(frozen=True)
class Workload:
    """Instructions as a user sends them and the prompts the model actually sees."""

    instructions: tuple[str, ...]
    prompts: tuple[str, ...]
    references: tuple[str, ...] = ()  # the set's reference answers, one per instruction

    def take(self, count: int, offset: int = 0, *, wrapped: bool = True) -> list[str]:
        """`count` prompts (or, unwrapped, the user's instructions), cycling through the set."""
        texts = self.prompts if wrapped else self.instructions
        return [texts[(offset + i) % len(texts)] for i in range(count)]


def read_instructions(path: Path) -> list[str]:
    """User requests of the self-instruct user-oriented set, in file order."""
    return [request for request, _reference in read_examples(path)]


def read_examples(path: Path) -> list[tuple[str, str]]:
    """(user request, reference answer) pairs of the set, in file order; the reference is the
    first instance's `output` (empty when absent)."""
    if not path.is_file():
        raise WorkloadError(f"instruction file {path} not found; pass --instructions PATH")
    examples: list[tuple[str, str]] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise WorkloadError(f"{path}:{number}: not JSON ({exc})") from None
        instruction = str(row.get("instruction", "")).strip()
        instances = row.get("instances") or [{}]
        extra = str(instances[0].get("input", "")).strip()
        reference = str(instances[0].get("output", "")).strip()
        if instruction:
            examples.append((f"{instruction}\n\n{extra}" if extra else instruction, reference))
    if not examples:
        raise WorkloadError(f"{path} holds no instructions")
    return examples


def build_workload(path: Path, family: Family) -> Workload:
    instructions, references = zip(*read_examples(path), strict=True)
    prompts = tuple(family.prompt_format.wrap(text) for text in instructions)
    return Workload(instructions=instructions, prompts=prompts, references=references)


def reference_lengths(references: tuple[str, ...], low: int, high: int) -> list[int]:
    """Each reference answer's length in GPT-2 tokens, clipped to `low..high`: the open loop's
    per-request `max_tokens`, the same for every family and system. GPT-2's vocabulary ships
    with the project (model_store/assets), so no hub is needed."""
    from transformers import GPT2TokenizerFast

    assets = Path(str(resources.files("model_store") / "assets" / "tokenizers" / "gpt2"))
    tokenizer = GPT2TokenizerFast(
        vocab_file=str(assets / "vocab.json"), merges_file=str(assets / "merges.txt")
    )
    counts = tokenizer(list(references), add_special_tokens=False)["input_ids"]
    return [min(high, max(low, len(ids))) for ids in counts]
