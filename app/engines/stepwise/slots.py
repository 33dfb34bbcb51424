"""A KV cache that rows join and leave without copying the others: preallocated row slots.

transformers' `DynamicCache` concatenates every step, and joining or filtering rows rebuilds
every layer's tensors: each is a copy of the whole cache. Measured in process (full GPT-124M
twin, 2-core AVX2 guest, 32 rows of ~150 columns): one decode step took 265 ms, 27 % of it in
that per-step concatenation, and under churn (a row leaves and one joins at nearly every step)
a join cost 140 ms and a filter 180 ms more. Here each layer owns a buffer with spare rows and
columns that grows rarely: to twice the rows (at least `MIN_ROWS`), and by half the columns
more (plus `SPARE_COLUMNS`) on each side that grows. Each growth copies the whole layer into
fresh memory, page faults included: one of 32 int8 GPT-124M rows ~470 columns wide took
0.4-0.8 s, so growing by 32 columns (or by a quarter of the rows) made a batch pay for it every
few dozen steps (the benchmark's 32 clients, 96 requests: 8 growths of the running batch that
way, 3 this way). The spare room costs little memory: the buffer is not zeroed, and pages no
row has written yet are never touched. The live region is a view of it, so:

- a decode step writes the new column in place;
- a joining row is copied into a free slot (only its own columns);
- a leaving row's slot is refilled by the last live row (only that row is copied), and columns
  no live row uses any more are dropped from the view.

Rows are padded on one side (`Side`, as in `rows.py`): "left" keeps every row's real tokens in
the last columns (decoder caches: every row writes its next token into the same column),
"right" keeps them in the first (T5's cross-attention cache). What the view shows past a row's
own columns is stale, and the attention mask hides it. It is never left unwritten, though: a new
buffer is not zeroed, so every column a view shows is copied, written or zeroed first, since
masked columns still take part in the attention's sums with weight zero, and zero times a NaN
from uninitialised memory is a NaN.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from app.engines.stepwise.row_groups import current_split
from app.engines.stepwise.rows import Side

SPARE_COLUMNS = 32
MIN_ROWS = 8


class SlotLayer(DynamicLayer):
    """One layer's keys and values: live rows [0, rows), live columns [start, end) of a buffer,
    stored in `storage` (None: the dtype the model computes them in)."""

    def __init__(self, side: Side, storage: torch.dtype | None = None) -> None:
        super().__init__()
        self.side = side
        self.storage = storage
        self._keys = self._values = torch.empty(0)
        self.rows = self.start = self.end = 0

    # --- what transformers' attention layers call ----------------------------------------------

    def update(
        self,
        key_states: torch.Tensor,
        value_states: torch.Tensor,
        cache_kwargs: dict[str, Any] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append `key_states`' columns to every live row, in place; return every live column.

        A decode step's attention (inside `decoding_in_groups`) reads them as stored; anything
        else gets them in the dtype it computes in (a copy, where the storage is narrower)."""
        if not self.is_initialized:
            self.lazy_initialization(key_states)
            self.rows = key_states.shape[0]
        added = key_states.shape[2]
        self._reserve(key_states, self.rows, 0, added)
        self._keys[: self.rows, :, self.end : self.end + added] = key_states
        self._values[: self.rows, :, self.end : self.end + added] = value_states
        self.end += added
        self._refresh()
        if self.keys.dtype == key_states.dtype or current_split().self_rows is not None:
            return self.keys, self.values
        return self.keys.to(key_states.dtype), self.values.to(key_states.dtype)

    # --- rows joining and leaving --------------------------------------------------------------

    def append(self, other: SlotLayer) -> None:
        """Copy `other`'s live rows into free slots after this layer's rows."""
        if not self.is_initialized:
            self.lazy_initialization(other.keys)
        width, live = other.end - other.start, self.end - self.start
        grow_left = max(0, width - live) if self.side == "left" else 0
        grow_right = max(0, width - live) if self.side == "right" else 0
        self._reserve(other.keys, self.rows + other.rows, grow_left, grow_right)
        if self.side == "left":
            self.start -= grow_left
            columns = slice(self.end - width, self.end)
        else:
            self.end += grow_right
            columns = slice(self.start, self.start + width)
        grown = (
            slice(self.start, self.start + grow_left)
            if grow_left
            else slice(self.end - grow_right, self.end)
        )
        self._keys[: self.rows, :, grown] = 0  # the running rows' new padding columns
        self._values[: self.rows, :, grown] = 0
        rows = slice(self.rows, self.rows + other.rows)
        self._keys[rows, :, self.start : self.end] = 0
        self._values[rows, :, self.start : self.end] = 0
        self._keys[rows, :, columns] = other.keys
        self._values[rows, :, columns] = other.values
        self.rows += other.rows
        self._refresh()

    def keep(self, order: Sequence[int], width: int) -> None:
        """Live rows become `order` (old row indices, see `compaction_order`), cut to `width`
        columns on the padding side."""
        columns = slice(self.start, self.end)
        for new, old in enumerate(order):
            if new != old:
                self._keys[new, :, columns] = self._keys[old, :, columns]
                self._values[new, :, columns] = self._values[old, :, columns]
        self.rows = len(order)
        if self.side == "left":
            self.start = self.end - width
        else:
            self.end = self.start + width
        self._refresh()

    # --- the buffer ----------------------------------------------------------------------------

    def _reserve(self, like: torch.Tensor, rows: int, left: int, right: int) -> None:
        """Make room for `rows` rows and `left`/`right` more columns around the live ones."""
        capacity_rows, capacity_columns = (
            (self._keys.shape[0], self._keys.shape[2]) if self._keys.dim() == 4 else (0, 0)
        )
        if rows <= capacity_rows and self.start >= left and self.end + right <= capacity_columns:
            return
        live = self.end - self.start
        new_rows = capacity_rows if rows <= capacity_rows else max(2 * rows, MIN_ROWS)
        spare = SPARE_COLUMNS + (live + left + right) // 2
        # a left-padded cache grows on both sides: a column per decode step on the right, and
        # on the left whenever a row wider than the live ones joins
        new_start = left + (spare if self.side == "left" else 0)
        new_columns = new_start + live + right + spare
        shape = (new_rows, like.shape[1], new_columns, like.shape[3])
        dtype = self.storage or like.dtype
        keys = torch.empty(shape, dtype=dtype, device=like.device)
        values = torch.empty(shape, dtype=dtype, device=like.device)
        if self.rows and live:
            keys[: self.rows, :, new_start : new_start + live] = self.keys
            values[: self.rows, :, new_start : new_start + live] = self.values
        self._keys, self._values = keys, values
        self.start, self.end = new_start, new_start + live

    def _refresh(self) -> None:
        self.keys = self._keys[: self.rows, :, self.start : self.end]
        self.values = self._values[: self.rows, :, self.start : self.end]


def compaction_order(rows: int, keep: Sequence[int]) -> list[int]:
    """Which old row each slot holds once only `keep` (ascending) stay: kept rows stay where
    they are, and the slots left empty below the new end take the kept rows above it."""
    count = len(keep)
    stay = [row for row in keep if row < count]
    movers = [row for row in keep if row >= count]
    holes = sorted(set(range(count)) - set(stay))
    order = list(range(count))
    for hole, mover in zip(holes, movers, strict=True):
        order[hole] = mover
    return order


@dataclass(frozen=True)
class CacheFormat:
    """How an engine's KV caches hold a token: `bytes_per_token` per row (keys and values of
    every layer), stored in `dtype` (None: the dtype the model computes them in)."""

    bytes_per_token: int
    dtype: torch.dtype | None = None

    def new_cache(self, side: Side) -> DynamicCache:
        """An empty cache whose layers are `SlotLayer`s (created as the model's layers
        update), padded on `side`."""
        cache = DynamicCache()
        cache.layer_class_to_replicate = lambda: SlotLayer(side, self.dtype)
        return cache


def append_rows(running: DynamicCache, joining: DynamicCache) -> DynamicCache:
    """`running` with `joining`'s rows after its own (in place; returned for convenience)."""
    for mine, theirs in zip(running.layers, joining.layers, strict=True):
        mine.append(theirs)
    return running


def keep_rows(cache: DynamicCache, order: Sequence[int], width: int) -> DynamicCache:
    """`cache` holding the rows `order` (see `compaction_order`), `width` columns wide."""
    for layer in cache.layers:
        layer.keep(order, width)
    return cache
