"""The server the playground tests share: two tiny twins of different families (a decoder-only
Alpaca model, the default, and a seq2seq raw-prompt model), on the transformers engine."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.openai_client import FLAN, FLAN_HUB_ID, GPT, GPT_HUB_ID
from tests.support.server import RunningServer, running_server


@pytest.fixture(scope="session")
def playground_server(tiny_twin: Callable[[str], Path]) -> Iterator[RunningServer]:
    for hub_id in (GPT_HUB_ID, FLAN_HUB_ID):
        tiny_twin(hub_id)
    with running_server([GPT, FLAN]) as server:
        yield server
