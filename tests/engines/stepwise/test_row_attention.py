"""The compiled decode-attention loop gives SDPA's result over each row's own columns, reading
strided views of a wider cache in place (float32 or bfloat16), with a bias added where asked;
it takes only what it `fits`."""

from __future__ import annotations

import numba
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from app.engines.stepwise import row_attention

ROWS, HEADS, DIM = 5, 3, 16
SPANS = [(0, 30), (25, 30), (10, 22), (29, 30), (0, 7)]  # [first, stop) per row


def _cache_view(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values as `slots.py` shows them: rows and columns of a larger buffer."""
    torch.manual_seed(seed)
    keys, values = torch.randn(2, ROWS + 3, HEADS, 50, DIM).unbind()
    return keys[:ROWS, :, 12:42], values[:ROWS, :, 12:42]


def _expected(query, keys, values, scale, bias=None) -> torch.Tensor:
    rows = []
    for row, (first, stop) in enumerate(SPANS):
        columns = slice(first, stop)
        extra = None if bias is None else bias[row : row + 1, :, :, columns]
        rows.append(
            F.scaled_dot_product_attention(
                query[row : row + 1],
                keys[row : row + 1, :, columns],
                values[row : row + 1, :, columns],
                attn_mask=extra,
                scale=scale,
            )
        )
    return torch.cat(rows)


def _spans() -> tuple[np.ndarray, np.ndarray]:
    first, stop = zip(*SPANS, strict=True)
    return np.array(first), np.array(stop)


@pytest.mark.parametrize("scale", [None, 1.0, 0.3])
def test_each_row_attends_over_its_own_columns(scale: float | None) -> None:
    keys, values = _cache_view(0)
    query = torch.randn(ROWS, HEADS, 1, DIM)
    assert not keys.is_contiguous()  # read in place, not copied

    actual = row_attention.attend_rows(query, keys, values, *_spans(), scale)

    torch.testing.assert_close(actual, _expected(query, keys, values, scale), rtol=1e-5, atol=1e-6)


def test_a_bias_is_added_to_the_scores_and_read_only_where_rows_attend() -> None:
    """T5's position bias (one per head, broadcast over rows) plus its mask, which is the
    dtype's minimum outside each row's columns: the loop reads only the columns it attends."""
    keys, values = _cache_view(1)
    query = torch.randn(ROWS, HEADS, 1, DIM)
    position_bias = torch.randn(1, HEADS, 1, keys.shape[2])
    mask = torch.full((ROWS, 1, 1, keys.shape[2]), torch.finfo(torch.float32).min)
    for row, (first, stop) in enumerate(SPANS):
        mask[row, ..., first:stop] = 0.0
    bias = position_bias + mask

    actual = row_attention.attend_rows(query, keys, values, *_spans(), 1.0, bias)

    expected = _expected(query, keys, values, 1.0, position_bias.expand(ROWS, -1, -1, -1))
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scale", [None, 0.3])
def test_a_bfloat16_cache_is_read_as_the_float32_it_rounds_to(scale: float | None) -> None:
    """The int8 engine's cache stores bfloat16: the loop widens it exactly as it reads it."""
    keys, values = _cache_view(3)
    stored_keys, stored_values = keys.bfloat16(), values.bfloat16()
    query = torch.randn(ROWS, HEADS, 1, DIM)
    assert row_attention.fits(query, stored_keys, stored_values)

    actual = row_attention.attend_rows(query, stored_keys, stored_values, *_spans(), scale)

    expected = _expected(query, stored_keys.float(), stored_values.float(), scale)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)
    rounding_changed_it = (actual - _expected(query, keys, values, scale)).abs().max()
    assert 0 < rounding_changed_it < 0.05


def test_it_fits_single_cpu_queries_over_alike_views_only() -> None:
    keys, values = _cache_view(2)
    query = torch.randn(ROWS, HEADS, 1, DIM)
    assert row_attention.fits(query, keys, values)
    assert row_attention.fits(query, keys.bfloat16(), values.bfloat16())
    assert row_attention.fits(query.bfloat16(), keys.bfloat16(), values.bfloat16())
    assert not row_attention.fits(query.half(), keys, values)
    assert not row_attention.fits(query, keys.half(), values.half())
    assert not row_attention.fits(query, keys.bfloat16(), values)
    assert not row_attention.fits(torch.randn(ROWS, HEADS, 2, DIM), keys, values)  # prefill
    assert not row_attention.fits(query, keys, values.contiguous())  # strides differ
    assert not row_attention.fits(query, keys.transpose(2, 3), values.transpose(2, 3))


def test_threads_are_capped_at_numbas_own() -> None:
    try:
        row_attention.use_threads(1)
        assert numba.get_num_threads() == 1
    finally:
        row_attention.use_threads(10_000)
    assert numba.get_num_threads() == numba.config.NUMBA_NUM_THREADS
