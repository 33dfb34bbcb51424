"""GPT-Neo's grouped decode attention gives what transformers' `GPTNeoSelfAttention` gives over
the whole left-padded cache, one query column per row, in global layers and in local ones
(whose window here is shorter than some rows)."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import GPTNeoConfig
from transformers.models.gpt_neo.modeling_gpt_neo import GPTNeoSelfAttention

from app.engines.stepwise.gpt_neo_row_groups import GroupedGPTNeoAttention
from app.engines.stepwise.row_groups import (
    DecodeSplit,
    RowWidths,
    decoding_in_groups,
    plan_row_groups,
)

WINDOW = 8
CONFIG = GPTNeoConfig(
    hidden_size=32, num_heads=4, num_layers=2, attention_types=[[["global", "local"], 1]],
    window_size=WINDOW, max_position_embeddings=128,
)  # fmt: skip
LENGTHS = [3, 40, 5, 6, 60, 4]  # each row's real columns, the new one included


def _modules(kind: str) -> tuple[GPTNeoSelfAttention, GroupedGPTNeoAttention]:
    reference = GPTNeoSelfAttention(CONFIG, kind, layer_id=0).eval()
    grouped = copy.deepcopy(reference)
    grouped.__class__ = GroupedGPTNeoAttention
    grouped.window = WINDOW if kind == "local" else None
    return reference, grouped


@pytest.mark.parametrize("kind", ["global", "local"])
def test_grouped_decode_attention_equals_gpt_neo_attention(kind: str) -> None:
    torch.manual_seed(0)
    reference, grouped = _modules(kind)
    groups = plan_row_groups(LENGTHS)
    assert len(groups) > 2  # the test exercises the split
    rows, heads, columns, width = len(LENGTHS), CONFIG.num_heads, max(LENGTHS), 8
    query = torch.randn(rows, heads, 1, width)
    keys, values = torch.randn(2, rows, heads, columns, width).unbind()
    mask = torch.full((rows, 1, 1, columns), torch.finfo(torch.float32).min)
    for row, length in enumerate(LENGTHS):
        mask[row, ..., columns - length :] = 0.0

    with decoding_in_groups(DecodeSplit(RowWidths(tuple(LENGTHS)))):
        expected, _ = reference._attn(query, keys, values, mask)
        actual, _ = grouped._attn(query, keys, values, mask)

    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def test_without_a_split_it_is_gpt_neo_attention() -> None:
    torch.manual_seed(1)
    reference, grouped = _modules("local")
    query, keys, values = torch.randn(3, 2, 4, 12, 8).unbind()

    torch.testing.assert_close(
        grouped._attn(query, keys, values)[0], reference._attn(query, keys, values)[0]
    )
