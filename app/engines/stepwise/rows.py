"""Row and column surgery on padded batch tensors and KV caches.

A running batch keeps every per-row tensor padded to one width. Decoder caches are left-padded
(right-aligned): every row writes its next token into the same new column, and a row's real
tokens are its last `length` columns. Encoder-side tensors (T5's cross-attention cache and
encoder mask) are right-padded. Joining two batches pads both to the wider one and stacks the
rows; a batch that loses rows drops the columns no remaining row uses, so the cache never
grows past the longest live sequence.
"""

from __future__ import annotations

from typing import Literal

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

Side = Literal["left", "right"]


def fit_columns(tensor: torch.Tensor, width: int, dim: int, side: Side) -> torch.Tensor:
    """`tensor` cut or zero-padded along `dim` to `width`, on the padding side."""
    current = tensor.shape[dim]
    if current == width:
        return tensor
    if current > width:
        start = current - width if side == "left" else 0
        return tensor.narrow(dim, start, width)
    shape = list(tensor.shape)
    shape[dim] = width - current
    padding = tensor.new_zeros(shape)
    parts = [padding, tensor] if side == "left" else [tensor, padding]
    return torch.cat(parts, dim=dim)


def stack_rows(first: torch.Tensor, second: torch.Tensor, dim: int, side: Side) -> torch.Tensor:
    """The rows of both tensors in one, padded to the wider of the two along `dim`."""
    width = max(first.shape[dim], second.shape[dim])
    return torch.cat(
        [fit_columns(first, width, dim, side), fit_columns(second, width, dim, side)], dim=0
    )


def cache_tensors(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.keys, layer.values) for layer in cache.layers]


def cache_from(tensors: list[tuple[torch.Tensor, torch.Tensor]]) -> DynamicCache:
    """A cache holding exactly `tensors` (one key/value pair per layer, no copy)."""
    layers = []
    for keys, values in tensors:
        layer = DynamicLayer()
        layer.lazy_initialization(keys)
        layer.keys, layer.values = keys, values
        layers.append(layer)
    cache = DynamicCache()
    cache.layers = layers
    return cache


def stack_caches(first: DynamicCache, second: DynamicCache, side: Side) -> DynamicCache:
    """One cache with the rows of both, padded to the longer one (columns are dim 2)."""
    return cache_from(
        [
            (stack_rows(k1, k2, 2, side), stack_rows(v1, v2, 2, side))
            for (k1, v1), (k2, v2) in zip(cache_tensors(first), cache_tensors(second), strict=True)
        ]
    )


def select_cache(cache: DynamicCache, rows: torch.Tensor, width: int, side: Side) -> DynamicCache:
    """Only `rows`, cut to the `width` columns they still use."""
    return cache_from(
        [
            (
                fit_columns(keys[rows], width, 2, side),
                fit_columns(values[rows], width, 2, side),
            )
            for keys, values in cache_tensors(cache)
        ]
    )
