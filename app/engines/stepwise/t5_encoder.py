"""T5's encoder pass, computed here from its layers' weights.

A joining input's encoder pass is most of its time to first token. Through transformers'
`T5Stack` the products are ~70 % of it and the rest is module plumbing, the layer norm written
out as six operations, and attention as separate matrix products and softmax. Computed here
(the decoder's way, `t5_decoder.py`): each layer's query, key and value as one product
(`stacked_linear`: in int8 the same outputs, the activations quantised once), the gated
feed-forward's two input projections as one, `rms_norm`, the relative position bias once a
pass (every layer shares the first layer's, as in transformers) and torch's fused attention
with it and the padding mask. Measured (full Flan-T5-248M twin, int8, 2-core AVX2 AMD EPYC,
alternated in one process): 40 tokens 54-55 -> 46-47 ms, 296 tokens 357-370 -> 335-338 ms,
the same states to the last bit in int8.

Dropout is left out (inference) and so is the float16 clamping (no precision here is float16).
The stacked projections replace the encoder's originals: transformers' encoder cannot run
after, and nothing calls it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel

from app.engines.stepwise.row_groups import UNSCALED_SDPA
from app.engines.stepwise.t5_layers import (
    FeedForward,
    StackPass,
    additive_mask,
    take_query_key_value,
)


@dataclass(frozen=True)
class _EncoderLayer:
    """One encoder block's weights, in the order a pass uses them."""

    norm: torch.Tensor
    query_key_value: nn.Module  # the three projections stacked
    out: nn.Module
    feed_forward: FeedForward


class T5EncoderPass(StackPass):
    """The encoder of a T5 model (its projections stacked, see the module's docstring)."""

    def __init__(self, model: PreTrainedModel) -> None:
        encoder = model.get_encoder()
        super().__init__(encoder, model.config)
        self._layers = [
            _EncoderLayer(
                norm=block.layer[0].layer_norm.weight,
                query_key_value=take_query_key_value(block.layer[0].SelfAttention),
                out=block.layer[0].SelfAttention.o,
                feed_forward=FeedForward.take(block.layer[1], self._epsilon),
            )
            for block in encoder.block
        ]

    def __call__(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The encoder states ([rows, columns, width]) of `ids` ([rows, columns], right-padded;
        `mask` is 1 over real tokens): what transformers' encoder gives."""
        rows, columns = ids.shape
        hidden = self._embed(ids)
        bias = self._relative_bias.compute_bias(columns, columns) + additive_mask(
            mask, hidden.dtype
        )
        for layer in self._layers:
            normed = self._norm(hidden, layer.norm)
            query, key, value = (
                layer.query_key_value(normed)
                .view(rows, columns, 3, self._heads, self._head_width)
                .permute(2, 0, 3, 1, 4)
                .unbind(0)
            )  # each [rows, heads, columns, head width]
            attended = UNSCALED_SDPA(query, key, value, bias)
            hidden = hidden + layer.out(attended.transpose(1, 2).reshape(rows, columns, -1))
            hidden = layer.feed_forward(hidden)
        return self._norm(hidden, self._final_norm)
