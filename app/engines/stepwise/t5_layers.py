"""Pieces T5's encoder and decoder passes (`t5_encoder.py`, `t5_decoder.py`) share."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.ao.nn.quantized.dynamic as quantized_dynamic
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig
from transformers.models.t5.modeling_t5 import T5Attention


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


def take_query_key_value(attention: nn.Module) -> nn.Module:
    """A `T5Attention`'s query, key and value projections as one (`stacked_linear`), the
    three dropped from it (not kept twice): its outputs side by side."""
    stacked = stacked_linear([attention.q, attention.k, attention.v])
    del attention.q, attention.k, attention.v
    return stacked


def rms_norm(hidden: torch.Tensor, weight: torch.Tensor, epsilon: float) -> torch.Tensor:
    """T5's layer norm (a scale, no mean, no bias) as torch's one operation."""
    return F.rms_norm(hidden, (hidden.shape[-1],), weight, epsilon)


@dataclass(frozen=True)
class FeedForward:
    """A T5 block's feed-forward sub-layer, its gated input projections stacked."""

    norm: torch.Tensor
    inner: nn.Module  # `wi`, or `wi_0` and `wi_1` stacked (gated)
    activation: nn.Module
    gated: bool
    out: nn.Module
    epsilon: float

    @classmethod
    def take(cls, sub_layer: nn.Module, epsilon: float) -> FeedForward:
        """`sub_layer`'s (a `T5LayerFF`) weights; a gated one's `wi_0` and `wi_1` are stacked
        and dropped from it (not kept twice)."""
        dense = sub_layer.DenseReluDense
        gated = hasattr(dense, "wi_0")
        feed_forward = cls(
            norm=sub_layer.layer_norm.weight,
            inner=stacked_linear([dense.wi_0, dense.wi_1]) if gated else dense.wi,
            activation=dense.act,
            gated=gated,
            out=dense.wo,
            epsilon=epsilon,
        )
        if gated:
            del dense.wi_0, dense.wi_1
        return feed_forward

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        """`hidden` plus the sub-layer's output (the residual connection included)."""
        inner = self.inner(rms_norm(hidden, self.norm, self.epsilon))
        if self.gated:
            gate, linear = inner.unflatten(-1, (2, -1)).unbind(-2)
            inner = self.activation(gate) * linear
        else:
            inner = self.activation(inner)
        return hidden + self.out(inner)


class StackPass:
    """What a pass through one of a T5 model's stacks (encoder or decoder) reads besides its
    blocks: the attention's shape, the token embedding, the relative position bias (every
    layer uses the first block's, as in transformers) and the final norm."""

    def __init__(self, stack: nn.Module, config: PretrainedConfig) -> None:
        self._heads, self._head_width = config.num_heads, config.d_kv
        self._epsilon = config.layer_norm_epsilon
        self._embed = stack.embed_tokens
        self._relative_bias: T5Attention = stack.block[0].layer[0].SelfAttention
        self._final_norm = stack.final_layer_norm.weight

    def _norm(self, hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return rms_norm(hidden, weight, self._epsilon)
