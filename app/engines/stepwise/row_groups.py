"""Decode attention that reads each row's own columns, not the whole padded cache.

The cache is as wide as its longest live row (`slots.py`), so one attention call over all rows
reads every shorter row's padding too. The benchmark's prompts (the self-instruct user-oriented
instructions, Alpaca-wrapped, GPT-2 tokens) run from 37 to 438 tokens with a median of 61: in
32 rows drawn at random, 35 % of the columns a decode step reads are real tokens. A decode
step's attention reads the cache once and computes little, so its time follows the columns it
reads: on a 2-core AMD EPYC it was 45 % of a batch-32 int8 step.

So a decode step splits the rows into runs of consecutive rows (`plan_row_groups`), each
attending over the last `width` columns only (rows are left-padded: a row's real tokens are
its last columns), with the split that costs the fewest row-columns once each extra call is
charged `CALL_COST_COLUMNS`. Same keys, same values, masked columns left out: in float32 the
same tokens.

transformers' GPT-2 and OPT attention layers call a registered attention function (their
`_supports_attention_backend`): this one is registered as `ROW_GROUPS_ATTENTION`, with
transformers' SDPA mask, and takes the split as the `row_groups` keyword the model passes down
to its layers. Prefill chunks (more than one query column) and calls without a split go to
transformers' own SDPA function. T5's attention is its own code, and takes the split in
`seq2seq_row_groups.py`; GPT-Neo's is too, and takes it in `gpt_neo_row_groups.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

ROW_GROUPS_ATTENTION = "lamini_row_groups"
# What one more attention call is charged, in row-columns read. Measured on a 2-core AMD EPYC
# with the keys in cache: ~30 us a call over 12 heads, ~0.3 us a row-column; inside a batch-32
# decode step, where the cache comes from memory, ~0.75 us a row-column (2.7 ms a layer for 32
# rows of ~110 columns).
CALL_COST_COLUMNS = 32


@dataclass(frozen=True)
class RowGroup:
    """Rows [start, stop) attend over the cache's last `width` columns."""

    start: int
    stop: int
    width: int


@dataclass
class DecodeSplit:
    """The row groups of the decode step in progress, for attention modules that are their
    own code (T5's, GPT-Neo's) and so take no keyword from the stepper: it sets the split before
    the model's forward and clears it after (None: attend as transformers does)."""

    self_groups: tuple[RowGroup, ...] | None = None
    cross_groups: tuple[RowGroup, ...] | None = None  # T5's cross-attention


def plan_row_groups(widths: Sequence[int]) -> tuple[RowGroup, ...]:
    """The split of rows (in cache order, each needing its last `widths[row]` columns) into
    runs that reads the fewest columns, `CALL_COST_COLUMNS` charged per run (dynamic
    programming over where each run starts; rows are at most a batch, tens)."""
    count = len(widths)
    best = [0] + [0] * count  # best[j]: cost of rows [0, j)
    start_of = [0] * (count + 1)
    for stop in range(1, count + 1):
        widest, best[stop] = 0, -1
        for start in range(stop - 1, -1, -1):
            widest = max(widest, widths[start])
            cost = best[start] + (stop - start) * widest + CALL_COST_COLUMNS
            if best[stop] < 0 or cost < best[stop]:
                best[stop], start_of[stop] = cost, start
    groups: list[RowGroup] = []
    stop = count
    while stop:
        start = start_of[stop]
        groups.append(RowGroup(start, stop, max(widths[start:stop])))
        stop = start
    return tuple(reversed(groups))


def row_groups_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    row_groups: tuple[RowGroup, ...] | None = None,
    **kwargs: object,
) -> tuple[torch.Tensor, None]:
    """transformers' SDPA attention, run per row group over its own columns when decoding."""
    if row_groups is None or len(row_groups) < 2 or query.shape[2] != 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    outputs = []
    for group in row_groups:
        rows, columns = slice(group.start, group.stop), slice(key.shape[2] - group.width, None)
        mask = None if attention_mask is None else attention_mask[rows, :, :, columns]
        output, _ = sdpa_attention_forward(
            module, query[rows], key[rows, :, columns], value[rows, :, columns], mask, **kwargs
        )
        outputs.append(output)
    return torch.cat(outputs), None


AttentionInterface.register(ROW_GROUPS_ATTENTION, row_groups_attention)
AttentionMaskInterface.register(ROW_GROUPS_ATTENTION, sdpa_mask)
