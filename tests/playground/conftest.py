"""The server the playground tests share: two tiny twins of different families (a decoder-only
Alpaca model and a seq2seq raw-prompt model), on the transformers engine."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.server import RunningServer, running_server

GPT_HUB_ID = "MBZUAI/LaMini-GPT-124M"
FLAN_HUB_ID = "MBZUAI/LaMini-Flan-T5-77M"
GPT = f"twin:{GPT_HUB_ID}@tiny"
FLAN = f"twin:{FLAN_HUB_ID}@tiny"


@pytest.fixture(scope="session")
def playground_server(tiny_twin: Callable[[str], Path]) -> Iterator[RunningServer]:
    tiny_twin(GPT_HUB_ID)
    tiny_twin(FLAN_HUB_ID)
    with running_server([GPT, FLAN]) as server:
        yield server
