"""The slot cache: rows join into free slots and leave by moving the last row into the hole,
and the live view always equals what concatenating and filtering whole tensors would give."""

from __future__ import annotations

import pytest
import torch

from app.engines.stepwise.row_groups import DecodeSplit, RowWidths, decoding_in_groups
from app.engines.stepwise.rows import fit_columns
from app.engines.stepwise.slots import SlotLayer, compaction_order


@pytest.mark.parametrize(
    ("rows", "keep", "order"),
    [
        (5, [1, 3, 4], [3, 1, 4]),
        (4, [0, 1, 2, 3], [0, 1, 2, 3]),
        (4, [0, 2], [0, 2]),
        (3, [], []),
        (6, [2, 5], [2, 5]),
    ],
)
def test_compaction_moves_only_rows_above_the_new_end(rows, keep, order) -> None:
    assert compaction_order(rows, keep) == order
    assert sorted(order) == keep


def _states(rows: int, columns: int, seed: int) -> torch.Tensor:
    return torch.randn((rows, 2, columns, 4), generator=torch.Generator().manual_seed(seed))


def _layer(side, states: torch.Tensor) -> SlotLayer:
    layer = SlotLayer(side)
    layer.update(states, -states)
    return layer


def _visible(layer: SlotLayer, widths: list[int], side) -> list[torch.Tensor]:
    """Each row's own columns of the live view (the rest is padding the mask hides)."""
    view = layer.keys
    full = view.shape[2]
    return [
        view[row, :, full - width :] if side == "left" else view[row, :, :width]
        for row, width in enumerate(widths)
    ]


@pytest.mark.parametrize("side", ["left", "right"])
def test_rows_join_grow_and_leave_like_whole_tensors(side) -> None:
    running, joining, wider = _states(3, 4, 0), _states(2, 2, 1), _states(1, 7, 2)
    layer = _layer(side, running)

    layer.append(_layer(side, joining))
    layer.append(_layer(side, wider))  # wider than the live columns: they grow on the padding side
    width = 7
    expected = [fit_columns(t, width, 2, side) for t in (running, joining, wider)]
    assert layer.keys.shape == (6, 2, width, 4)
    assert torch.equal(layer.values, -layer.keys)
    rows = torch.cat(expected)
    widths = [4, 4, 4, 2, 2, 7]
    for got, want, w in zip(_visible(layer, widths, side), rows, widths, strict=True):
        own = want[:, width - w :] if side == "left" else want[:, :w]
        assert torch.equal(got, own)

    order = compaction_order(6, [0, 3, 4])  # rows 3 and 4 move down; 7 columns -> 4
    layer.keep(order, 4)
    kept_widths = [widths[i] for i in order]
    assert layer.keys.shape == (3, 2, 4, 4)
    for got, old, w in zip(_visible(layer, kept_widths, side), order, kept_widths, strict=True):
        source = rows[old]
        own = source[:, width - w :] if side == "left" else source[:, :w]
        assert torch.equal(got, own)


def test_decode_steps_write_in_place_until_the_spare_columns_run_out() -> None:
    layer = _layer("left", _states(2, 3, 0))
    buffer = layer._keys
    step = _states(2, 1, 1)

    keys, _ = layer.update(step, -step)

    assert layer._keys is buffer  # no copy: the column went into the spare room
    assert torch.equal(keys[:, :, -1:], step)
    assert keys.shape[2] == 4
    for _ in range(40):
        layer.update(step, -step)
    assert layer.keys.shape[2] == 44
    assert torch.equal(layer.keys[:, :, -1:], step)


@pytest.mark.parametrize("side", ["left", "right"])
def test_no_view_shows_uninitialised_memory(side, monkeypatch) -> None:
    """New buffers are not zeroed, yet every column a view shows has been written: masked
    columns still enter the attention's sums with weight zero, and 0 x NaN is NaN. Here every
    new buffer starts as NaN."""
    real_empty = torch.empty
    monkeypatch.setattr(torch, "empty", lambda *a, **k: real_empty(*a, **k).fill_(float("nan")))
    layer = _layer(side, _states(3, 4, 0))
    for seed, (rows, columns) in enumerate([(2, 2), (1, 9), (4, 50), (1, 3)], start=1):
        layer.append(_layer(side, _states(rows, columns, seed)))  # grows rows and columns
        step = _states(layer.rows, 1, 10 + seed)
        if side == "left":
            layer.update(step, -step)
        assert torch.isfinite(layer.keys).all()
        assert torch.isfinite(layer.values).all()
    layer.keep(compaction_order(layer.rows, [0, 5, 8]), 20)
    assert torch.isfinite(layer.keys).all()


def test_a_narrower_storage_is_handed_out_as_stored_only_to_a_decode_step() -> None:
    """The int8 engine stores bfloat16: a decode step's attention (inside a split) reads the
    stored views in place; a prefill chunk gets them widened to the dtype it computes in."""
    states = _states(2, 3, 0)
    layer = SlotLayer("left", torch.bfloat16)

    keys, values = layer.update(states, -states)

    assert layer.keys.dtype == torch.bfloat16
    assert keys.dtype == values.dtype == torch.float32
    assert torch.equal(keys, states.bfloat16().float())
    step = _states(2, 1, 1)
    with decoding_in_groups(DecodeSplit(self_rows=RowWidths((4, 4)))):
        keys, values = layer.update(step, -step)
    assert keys.dtype == torch.bfloat16
    assert keys.data_ptr() == layer.keys.data_ptr()  # the cache itself, not a copy
    assert torch.equal(values[:, :, -1:], (-step).bfloat16())
