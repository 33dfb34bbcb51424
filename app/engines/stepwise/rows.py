"""Row and column surgery on padded per-row tensors (masks); the caches' is in `slots.py`.

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
