"""The workload every system runs: real user instructions, wrapped by the family's prompt format.

Instructions come from the self-instruct user-oriented set (shared/eval); a request is the
instruction and its first instance's input joined by a blank line, as that set's README says.
Output length is forced (min = max new tokens) wherever a system allows it, so every system
generates the same number of tokens from random-weight twins.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
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

    def take(self, count: int, offset: int = 0, *, wrapped: bool = True) -> list[str]:
        """`count` prompts (or, unwrapped, the user's instructions), cycling through the set."""
        texts = self.prompts if wrapped else self.instructions
        return [texts[(offset + i) % len(texts)] for i in range(count)]


def read_instructions(path: Path) -> list[str]:
    """User requests of the self-instruct user-oriented set, in file order."""
    if not path.is_file():
        raise WorkloadError(f"instruction file {path} not found; pass --instructions PATH")
    requests: list[str] = []
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
        if instruction:
            requests.append(f"{instruction}\n\n{extra}" if extra else instruction)
    if not requests:
        raise WorkloadError(f"{path} holds no instructions")
    return requests


def build_workload(path: Path, family: Family) -> Workload:
    instructions = tuple(read_instructions(path))
    prompts = tuple(family.prompt_format.wrap(text) for text in instructions)
    return Workload(instructions=instructions, prompts=prompts)
