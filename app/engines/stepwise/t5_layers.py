"""Pieces T5's encoder and decoder passes (`t5_encoder.py`, `t5_decoder.py`) share."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.ao.nn.quantized.dynamic as quantized_dynamic
from torch import nn


def stacked_linear(linears: Sequence[nn.Module]) -> nn.Module:
    """One linear layer computing what `linears` (same inputs, no bias) compute, their outputs
    side by side: float weights concatenated (the products may sum in another order), or int8
    weights (PyTorch's dynamic quantisation, a scale per output row) concatenated with their
    scales, which gives the same outputs."""
    first = linears[0]
    if isinstance(first, quantized_dynamic.Linear):
        weights = [linear.weight() for linear in linears]
        stacked = torch._make_per_channel_quantized_tensor(
            torch.cat([weight.int_repr() for weight in weights]),
            torch.cat([weight.q_per_channel_scales() for weight in weights]).double(),
            torch.cat([weight.q_per_channel_zero_points() for weight in weights]).long(),
            0,
        )
        joined = quantized_dynamic.Linear(stacked.shape[1], stacked.shape[0], dtype=torch.qint8)
        joined.set_weight_bias(stacked, None)
        return joined
    weight = torch.cat([linear.weight for linear in linears])
    joined = nn.Linear(weight.shape[1], weight.shape[0], bias=False, dtype=weight.dtype)
    joined.weight = nn.Parameter(weight.to(first.weight.device), requires_grad=False)
    return joined


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[rows, 1, 1, columns]: 0 where `mask` ([rows, columns]) is 1, the dtype's lowest
    elsewhere (added to the scores; only attention that reads padding needs it)."""
    return (1 - mask[:, None, None, :]).to(dtype) * torch.finfo(dtype).min
