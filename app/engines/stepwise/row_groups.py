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

A stepper plans the split and runs its model's forward inside `decoding_in_groups(split)`;
every attention module reads it from there (`current_split`), one mechanism for every family,
since no model passes a keyword of ours down to its attention. transformers' GPT-2 and OPT
attention layers call a registered attention function (their `_supports_attention_backend`):
this one is registered as `ROW_GROUPS_ATTENTION`, with transformers' SDPA mask. GPT-Neo's
attention is its own code and reads the split in `gpt_neo_row_groups.py`; T5's decode steps
run in `t5_decoder.py`, which passes it. All three attend with `attend_by_rows`: on the CPU
one compiled loop over every row's own columns (`row_attention.py`, faster still), else SDPA
group by group. Prefill chunks (more than one query column) and forwards outside a split
attend as transformers does.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from app.engines.stepwise import row_attention
from app.engines.stepwise.rows import Side

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


@dataclass(frozen=True)
class RowWidths:
    """How many columns each row of a decode step attends over, in cache order."""

    widths: tuple[int, ...]

    @functools.cached_property
    def groups(self) -> tuple[RowGroup, ...]:
        """The split SDPA attends by (planned once a step, read by every layer)."""
        return plan_row_groups(self.widths)

    @functools.cached_property
    def array(self) -> np.ndarray:
        return np.asarray(self.widths, dtype=np.int64)


@dataclass(frozen=True)
class DecodeSplit:
    """The rows' widths in the decode step in progress (None: attend as transformers does)."""

    self_rows: RowWidths | None = None
    cross_rows: RowWidths | None = None  # T5's cross-attention


_NO_SPLIT = DecodeSplit()
_CURRENT_SPLIT: ContextVar[DecodeSplit | None] = ContextVar("decode_split", default=None)


@contextmanager
def decoding_in_groups(split: DecodeSplit) -> Iterator[None]:
    """Attention modules read `split` while this is open (in this thread: the model's forward
    runs in the thread that opens it), and attend as transformers does again after."""
    token = _CURRENT_SPLIT.set(split)
    try:
        yield
    finally:
        _CURRENT_SPLIT.reset(token)


def current_split() -> DecodeSplit:
    """The split `decoding_in_groups` holds open here; outside it, one without groups."""
    return _CURRENT_SPLIT.get() or _NO_SPLIT


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


Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
# what T5 and GPT-Neo attend with: they do not scale their scores
UNSCALED_SDPA: Attend = functools.partial(F.scaled_dot_product_attention, scale=1.0)


def attend_by_rows(
    attend: Attend,
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor | None,
    rows: RowWidths,
    *,
    scale: float | None = None,
    mask_is_bias: bool = False,
    side: Side = "left",
    window: int | None = None,
) -> torch.Tensor:
    """What `attend(query, keys, values, mask)` gives ([rows, heads, columns, width] each, the
    mask per row), each row reading only its own columns: its last `rows.widths[row]` when the
    cache is left-padded, its first when right-padded (T5's encoder states); `window` caps
    them (GPT-Neo's local layers). `scale` is what `attend` scales scores by (None:
    1/sqrt(width)); `mask_is_bias`: the mask is added to the scores (T5's position bias).

    On the CPU `row_attention.py`'s loop runs, one pass over every row's own columns, in
    float32 whatever the query's dtype, over the cache as stored; elsewhere `attend` runs per
    row group over the group's columns (in the query's dtype), the results stacked by row."""
    total = keys.shape[2]
    widths = rows.array if window is None else np.minimum(rows.array, window)
    if row_attention.fits(query, keys, values):
        first = total - widths if side == "left" else np.zeros_like(widths)
        stop = np.full_like(widths, total) if side == "left" else widths
        bias = mask if mask_is_bias else None
        attended = row_attention.attend_rows(query.float(), keys, values, first, stop, scale, bias)
        return attended.to(query.dtype)
    outputs = []
    for group in rows.groups:
        width = group.width if window is None else min(group.width, window)
        selected = slice(group.start, group.stop)
        columns = slice(total - width, None) if side == "left" else slice(0, width)
        group_mask = None if mask is None else mask[selected, :, :, columns]
        outputs.append(
            attend(
                query[selected],
                keys[selected, :, columns].to(query.dtype),
                values[selected, :, columns].to(query.dtype),
                group_mask,
            )
        )
    return torch.cat(outputs)


def row_groups_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: object,
) -> tuple[torch.Tensor, None]:
    """transformers' SDPA attention, run per row group over its own columns when decoding."""
    rows = current_split().self_rows
    if rows is None or query.shape[2] != 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    def attend(
        query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        return sdpa_attention_forward(module, query, keys, values, mask, **kwargs)[0].transpose(
            1, 2
        )

    scale = kwargs.get("scaling")
    attended = attend_by_rows(attend, query, key, value, attention_mask, rows, scale=scale)
    return attended.transpose(1, 2).contiguous(), None


AttentionInterface.register(ROW_GROUPS_ATTENTION, row_groups_attention)
AttentionMaskInterface.register(ROW_GROUPS_ATTENTION, sdpa_mask)
