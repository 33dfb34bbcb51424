"""T5's grouped decode attention gives what transformers' `T5Attention` gives over the whole
padded caches: self-attention with its relative position bias (left-padded decoder cache) and
cross-attention (right-padded encoder states), one query column per row."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import DynamicCache, EncoderDecoderCache, T5Config
from transformers.models.t5.modeling_t5 import T5Attention

from app.engines.stepwise.row_groups import (
    DecodeSplit,
    RowWidths,
    decoding_in_groups,
)
from app.engines.stepwise.seq2seq_row_groups import GroupedT5Attention

CONFIG = T5Config(d_model=32, d_kv=8, num_heads=4, is_decoder=True, dropout_rate=0.0)
LENGTHS = [3, 40, 5, 6, 60, 4]  # each row's real columns, very different: several groups


def _additive_mask(side: str, columns: int, lengths: list[int]) -> torch.Tensor:
    """[rows, 1, 1, columns]: 0 over each row's real columns, the dtype's minimum elsewhere."""
    mask = torch.full((len(lengths), 1, 1, columns), torch.finfo(torch.float32).min)
    for row, length in enumerate(lengths):
        real = slice(columns - length, None) if side == "left" else slice(0, length)
        mask[row, ..., real] = 0.0
    return mask


def _caches(contents: torch.Tensor) -> EncoderDecoderCache:
    """Self- and cross-attention caches holding `contents` ([4, rows, heads, columns, width]:
    keys and values of each; a decode step adds a column to the first, the second is filled)."""
    self_cache, cross_cache = DynamicCache(), DynamicCache()
    self_cache.update(contents[0].clone(), contents[1].clone(), 0)
    cross_cache.update(contents[2], contents[3], 0)
    cache = EncoderDecoderCache(self_cache, cross_cache)
    cache.is_updated[0] = True
    return cache


@pytest.mark.parametrize("cross", [False, True], ids=["self", "cross"])
def test_grouped_decode_attention_equals_t5_attention(cross: bool) -> None:
    torch.manual_seed(0)
    columns = max(LENGTHS)
    reference = T5Attention(CONFIG, has_relative_attention_bias=not cross, layer_idx=0).eval()
    grouped = copy.deepcopy(reference)
    grouped.__class__ = GroupedT5Attention
    side = "right" if cross else "left"
    widths = LENGTHS if cross else [length + 1 for length in LENGTHS]  # the new column too
    rows = RowWidths(tuple(widths))
    assert len(rows.groups) > 2  # the test exercises the split
    split = DecodeSplit(None, rows) if cross else DecodeSplit(rows, None)

    hidden = torch.randn(len(LENGTHS), 1, CONFIG.d_model)
    states = torch.zeros(len(LENGTHS), columns, 1) if cross else None  # only its shape counts
    mask = _additive_mask(side, columns + (not cross), widths)
    position = torch.tensor([columns])  # the new decoder column's
    contents = torch.randn(4, len(LENGTHS), CONFIG.num_heads, columns, CONFIG.d_kv)
    results = []
    with torch.inference_mode(), decoding_in_groups(split):
        for module in (reference, grouped):
            cache = _caches(contents)
            results.append(
                module(
                    hidden,
                    mask=mask,
                    key_value_states=states,
                    past_key_values=cache,
                    use_cache=True,
                    cache_position=position,
                )
            )
    (expected, expected_bias), (actual, actual_bias) = results

    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(actual_bias, expected_bias)


def test_without_a_split_it_is_t5_attention() -> None:
    """The first decoder step (which fills the cross-attention cache) and any other use."""
    torch.manual_seed(1)
    reference = T5Attention(CONFIG, has_relative_attention_bias=True, layer_idx=0).eval()
    grouped = copy.deepcopy(reference)
    grouped.__class__ = GroupedT5Attention
    hidden = torch.randn(2, 5, CONFIG.d_model)
    with torch.inference_mode():
        expected = reference(hidden, query_length=5)
        actual = grouped(hidden, query_length=5)

    torch.testing.assert_close(actual[0], expected[0], rtol=0, atol=0)
