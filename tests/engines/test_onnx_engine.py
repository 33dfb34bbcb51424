"""The ONNX engine runs a batch as length-sorted groups, with torch's glue on one thread.

Token parity with transformers (grouped batches included) is in test_parity; these tests pin
down how a batch is run, which is what the throughput measured in the module docstring needs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from app.core.engine_kinds import EngineKind
from app.engines.base import EngineRequest, GeneratedToken, SamplingParams
from app.engines.onnx_engine import GROUP_SIZE, OnnxEngine
from app.settings import Settings
from model_store.resolver import ensure_converted, open_engine
from model_store.sources import resolve_source
from tests.support.twins import FAMILY_TWINS

NEW_TOKENS = 4


@pytest.fixture(scope="module")
def engine(twin_cache_dir: Path, store_dir: Path) -> OnnxEngine:
    settings = Settings(store_dir=store_dir, device="cpu", quantization="float32")
    source = resolve_source(
        f"twin:{FAMILY_TWINS['lamini-neo']}@tiny", twin_cache_dir=twin_cache_dir
    )
    entry = ensure_converted(source, EngineKind.ONNX, settings).entry
    opened = open_engine(EngineKind.ONNX, entry.path, source.family, settings)
    assert isinstance(opened, OnnxEngine)
    return opened


def _requests(lengths: list[int], events: list[int]) -> list[EngineRequest]:
    """Requests with prompts of `lengths`; each generated token appends its prompt's length to
    `events`."""

    def recorder(length: int) -> Callable[[GeneratedToken, bool], None]:
        return lambda token, last: events.append(length)

    return [
        EngineRequest(prompt_ids=[100 + i for i in range(length)], max_new_tokens=NEW_TOKENS,
                      on_token=recorder(length))
        for length in lengths
    ]  # fmt: skip


def test_a_batch_runs_as_length_sorted_groups_longest_first(engine: OnnxEngine) -> None:
    lengths = list(range(3, 3 + 2 * GROUP_SIZE + 3))  # three groups, given shortest first
    events: list[int] = []

    generations = engine.generate(_requests(lengths, events), SamplingParams(min_new_tokens=1))

    assert [len(g.prompt_ids) for g in generations] == lengths  # answers in request order
    assert all(len(g.tokens) == NEW_TOKENS for g in generations)
    # One padded batch would interleave every row's tokens step by step. Groups run one after
    # another: every token of the longest group comes first, then the next group's.
    size = -(-len(lengths) // 3)
    longest_first = lengths[::-1]
    runs = [
        events[start : start + size * NEW_TOKENS]
        for start in range(0, len(events), size * NEW_TOKENS)
    ]
    assert [sorted(set(run)) for run in runs] == [
        sorted(longest_first[start : start + size]) for start in (0, size, 2 * size)
    ]


def test_grouped_batches_generate_what_single_requests_generate(engine: OnnxEngine) -> None:
    lengths = [3, 17, 5, 11, 2, 9, 14, 4, 8, 6, 12]
    greedy = SamplingParams()

    batched = [g.token_ids for g in engine.generate(_requests(lengths, []), greedy)]
    single = [engine.generate(_requests([n], []), greedy)[0].token_ids for n in lengths]

    assert batched == single


def test_torch_thread_setting_is_restored_after_a_batch(engine: OnnxEngine) -> None:
    before = torch.get_num_threads()

    engine.generate(_requests([3, 4], []), SamplingParams())

    assert torch.get_num_threads() == before
