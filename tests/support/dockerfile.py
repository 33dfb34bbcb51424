"""The Dockerfile as data: its global ARGs and its stages, each a list of instructions, so
tests can check what an image runs and run the same commands outside Docker.

Covers the subset of the syntax this repository's Dockerfile uses: parser directives and
comments, backslash continuations, `FROM image AS name`, and `ENV KEY=value` pairs.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

DOCKERFILE = Path(__file__).resolve().parents[2] / "Dockerfile"


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str

    def exec_form(self) -> list[str]:
        """The JSON array of an exec-form CMD/ENTRYPOINT/HEALTHCHECK (flags stripped)."""
        text = self.arguments[self.arguments.index("[") :]
        words = json.loads(text)
        assert all(isinstance(word, str) for word in words), text
        return words


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        assert found, f"stage {self.name!r} has no {keyword}"
        return found[-1]

    def env(self) -> dict[str, str]:
        """ENV of this stage alone (`KEY=value` pairs, the form this Dockerfile uses)."""
        values: dict[str, str] = {}
        for instruction in self.all("ENV"):
            for pair in shlex.split(instruction.arguments):
                key, _, value = pair.partition("=")
                values[key] = value
        return values


@dataclass(frozen=True)
class Dockerfile:
    args: dict[str, str]
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise AssertionError(f"Dockerfile has no stage {name!r}")

    def lineage(self, name: str) -> list[Stage]:
        """The stage and the stages it is built FROM, nearest first."""
        chain = [self.stage(name)]
        names = {stage.name for stage in self.stages}
        while chain[-1].base in names:
            chain.append(self.stage(chain[-1].base))
        return chain

    def env(self, name: str) -> dict[str, str]:
        """ENV a container of stage `name` starts with (inherited through FROM)."""
        merged: dict[str, str] = {}
        for stage in reversed(self.lineage(name)):
            merged.update(stage.env())
        return merged


def _logical_lines(text: str) -> Iterator[str]:
    """Instructions with backslash continuations joined, comments and blank lines dropped."""
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or not line:
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        yield pending + line
        pending = ""
    assert not pending, "Dockerfile ends inside a continued line"


def parse_dockerfile(path: Path = DOCKERFILE) -> Dockerfile:
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in _logical_lines(path.read_text()):
        keyword, _, arguments = line.partition(" ")
        keyword, arguments = keyword.upper(), arguments.strip()
        if keyword == "FROM":
            words = arguments.split()
            base = words[0]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else base
            stages.append(Stage(name=name, base=base))
        elif not stages:
            assert keyword == "ARG", f"only ARG may come before the first FROM, not {keyword}"
            key, _, default = arguments.partition("=")
            args[key] = default
        else:
            stages[-1].instructions.append(Instruction(keyword, arguments))
    return Dockerfile(args=args, stages=stages)
