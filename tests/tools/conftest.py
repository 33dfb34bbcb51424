"""Fixtures for the third-party tool tests: one real server for the module, and each tool's
own virtualenv (built once from `tests/tools/requirements/`, see `tests/support/tool_venvs.py`).

The server runs the tiny LaMini-GPT-124M twin on the transformers engine (the one that can
score prompts and constrain decoding); the tools read its tokenizer from the twin's checkpoint
directory, never from a hub.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.server import RunningServer, running_server
from tests.support.tool_venvs import ensure_tool_venv
from tests.support.twins import TOOLS_HUB_ID, TOOLS_MODEL


@pytest.fixture(scope="module")
def gpt_server() -> Iterator[RunningServer]:
    with running_server([TOOLS_MODEL], args=["--max-batch-size", "8"]) as server:
        yield server


@pytest.fixture(scope="module")
def gpt_tokenizer_dir(tiny_twin: Callable[[str], Path]) -> Path:
    """The twin's checkpoint directory: it holds the model's tokenizer files."""
    return tiny_twin(TOOLS_HUB_ID)


@pytest.fixture(scope="session")
def tool_bin() -> Callable[[str], Path]:
    """`tool_bin(name)` -> the `bin/` directory of the tool's virtualenv (built if missing)."""
    return ensure_tool_venv
