"""Running the `lamini-serve` command in tests: in a fresh process or in this one."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from app.cli import main

LAMINI_SERVE = Path(sys.executable).with_name("lamini-serve")


@dataclass(frozen=True)
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def lamini_serve(*args: str, env: dict[str, str] | None = None) -> CliResult:
    """Run the installed `lamini-serve` script in a fresh process."""
    done = subprocess.run(
        [str(LAMINI_SERVE), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )
    return CliResult(done.returncode, done.stdout, done.stderr)


def run_in_process(capsys: pytest.CaptureFixture[str], *args: str) -> CliResult:
    """The same command without a new interpreter (for tests that run many generations)."""
    returncode = main(list(args))
    captured = capsys.readouterr()
    return CliResult(returncode, captured.out, captured.err)


def assert_one_line_error(result: CliResult, *fragments: str) -> str:
    """A failed command: non-zero exit, exactly one line on stderr naming the problem."""
    assert result.returncode != 0, result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("lamini-serve: error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]
