"""Row-wise decode attention: the row-group split reads the fewest columns, and attending per row
over its own columns gives what one call over the whole padded cache gives."""

from __future__ import annotations

import itertools
import random
import threading

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from app.engines.stepwise.row_groups import (
    CALL_COST_COLUMNS,
    DecodeSplit,
    RowGroup,
    RowWidths,
    current_split,
    decoding_in_groups,
    plan_row_groups,
    row_groups_attention,
)


def _cost(groups: tuple[RowGroup, ...]) -> int:
    return sum((g.stop - g.start) * g.width + CALL_COST_COLUMNS for g in groups)


def _every_split(widths: list[int]) -> list[tuple[RowGroup, ...]]:
    splits = []
    for cuts in itertools.product((False, True), repeat=len(widths) - 1):
        bounds = [0, *(i + 1 for i, cut in enumerate(cuts) if cut), len(widths)]
        splits.append(
            tuple(RowGroup(a, b, max(widths[a:b])) for a, b in itertools.pairwise(bounds))
        )
    return splits


def test_rows_of_one_width_stay_one_group() -> None:
    assert plan_row_groups([50] * 8) == (RowGroup(0, 8, 50),)


def test_a_long_row_among_short_ones_gets_a_group_of_its_own() -> None:
    widths = [40, 45, 400, 42, 38, 41]
    assert plan_row_groups(widths) == (
        RowGroup(0, 2, 45),
        RowGroup(2, 3, 400),
        RowGroup(3, 6, 42),
    )


@pytest.mark.parametrize("seed", range(20))
def test_the_split_is_the_cheapest_there_is(seed: int) -> None:
    rng = random.Random(seed)
    widths = [rng.choice((8, 30, 60, 61, 200, 450)) for _ in range(rng.randint(1, 9))]
    groups = plan_row_groups(widths)

    assert groups[0].start == 0
    assert groups[-1].stop == len(widths)
    assert all(a.stop == b.start for a, b in itertools.pairwise(groups))
    assert all(g.width == max(widths[g.start : g.stop]) for g in groups)
    assert _cost(groups) == min(_cost(split) for split in _every_split(widths))


@pytest.mark.parametrize(
    "dtype",
    [torch.float32, torch.bfloat16, torch.float16],
    ids=["loop", "loop-bfloat16", "sdpa-groups"],
)
@pytest.mark.parametrize("scaling", [None, 1.0], ids=["gpt2-default-scale", "opt-prescaled"])
def test_row_attention_equals_one_call_over_the_padded_cache(
    scaling: float | None, dtype: torch.dtype
) -> None:
    """Left-padded rows of very different lengths, one query column each (a decode step):
    float32 and bfloat16 run `row_attention.py`'s loop, float16 (which the loop does not
    read) SDPA per row group, as every dtype does off the CPU."""
    torch.manual_seed(0)
    lengths = [3, 70, 5, 6, 120, 4]
    rows, heads, columns, dim = len(lengths), 4, max(lengths), 16
    keys, values = torch.randn(2, rows, heads, columns, dim, dtype=dtype).unbind()
    query = torch.randn(rows, heads, 1, dim, dtype=dtype)
    mask = torch.zeros(rows, 1, 1, columns, dtype=torch.bool)
    for row, length in enumerate(lengths):
        mask[row, ..., columns - length :] = True
    module = torch.nn.Module()
    groups = plan_row_groups(lengths)
    assert len(groups) > 2  # the test exercises the split

    with decoding_in_groups(DecodeSplit(self_rows=RowWidths(tuple(lengths)))):
        grouped, _ = row_groups_attention(module, query, keys, values, mask, scaling=scaling)
    whole, _ = sdpa_attention_forward(module, query, keys, values, mask, scaling=scaling)

    tolerance = 1e-6 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(grouped, whole, rtol=tolerance, atol=tolerance)


def test_prefill_chunks_ignore_the_split() -> None:
    """More than one query column: one call over everything, whatever split is passed."""
    torch.manual_seed(1)
    keys, values = torch.randn(2, 2, 2, 9, 8).unbind()
    query = torch.randn(2, 2, 3, 8)
    module = torch.nn.Module()

    with decoding_in_groups(DecodeSplit(self_rows=RowWidths((2, 9)))):
        grouped, _ = row_groups_attention(module, query, keys, values, None)
    whole, _ = sdpa_attention_forward(module, query, keys, values, None)

    torch.testing.assert_close(grouped, whole)


def test_the_split_holds_only_inside_its_block_even_when_the_forward_fails() -> None:
    split = DecodeSplit(self_rows=RowWidths((4,)))
    seen: list[DecodeSplit] = []

    def failing_forward() -> None:
        with decoding_in_groups(split):
            seen.append(current_split())
            raise RuntimeError("the model's forward failed")

    with pytest.raises(RuntimeError):
        failing_forward()

    assert seen == [split]
    assert current_split() == DecodeSplit()


def test_the_split_is_per_thread() -> None:
    """The engine's model thread opens it; a forward in another thread never sees it."""
    seen: list[DecodeSplit] = []
    with decoding_in_groups(DecodeSplit(self_rows=RowWidths((4,)))):
        thread = threading.Thread(target=lambda: seen.append(current_split()))
        thread.start()
        thread.join()

    assert seen == [DecodeSplit()]
