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

A pass can stop between layers (`EncoderProgress`), so that the running batch decodes while a
long input is encoded a few layers per turn (`seq2seq.py`): attention reads every column both
ways, so an input cannot be split by columns as a decoder-only prompt is, but each layer needs
only the one before it.

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


@dataclass
class EncoderProgress:
    """A pass part way through the encoder: the hidden states after its first `layers` layers,
    and what every layer adds to its attention scores (the position bias and the padding)."""

    hidden: torch.Tensor  # [rows, columns, width]
    bias: torch.Tensor
    layers: int = 0


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

    @property
    def depth(self) -> int:
        """The encoder's layers: a pass advances through them a few at a time (`advance`)."""
        return len(self._layers)

    def begin(self, ids: torch.Tensor, mask: torch.Tensor) -> EncoderProgress:
        """A pass over `ids` ([rows, columns], right-padded; `mask` is 1 over real tokens),
        no layer run yet."""
        columns = ids.shape[1]
        hidden = self._embed(ids)
        bias = self._relative_bias.compute_bias(columns, columns) + additive_mask(
            mask, hidden.dtype
        )
        # laid out once a pass: the sum keeps the position bias's permuted layout, which the
        # fused attention copied at every layer (296 tokens: ~1 ms a layer, 12-15 ms a pass)
        return EncoderProgress(hidden, bias.contiguous())

    def advance(self, progress: EncoderProgress, layers: int) -> None:
        """Run the next `layers` layers of `progress` (fewer where fewer are left)."""
        for layer in self._layers[progress.layers : progress.layers + layers]:
            progress.hidden = self._layer(layer, progress.hidden, progress.bias)
            progress.layers += 1

    def states(self, progress: EncoderProgress) -> torch.Tensor:
        """The encoder states ([rows, columns, width]) of a pass through every layer: what
        transformers' encoder gives."""
        if progress.layers < self.depth:
            raise ValueError(f"the pass has run {progress.layers} of {self.depth} layers")
        return self._norm(progress.hidden, self._final_norm)

    def _layer(
        self, layer: _EncoderLayer, hidden: torch.Tensor, bias: torch.Tensor
    ) -> torch.Tensor:
        rows, columns = hidden.shape[:2]
        normed = self._norm(hidden, layer.norm)
        query, key, value = (
            layer.query_key_value(normed)
            .view(rows, columns, 3, self._heads, self._head_width)
            .permute(2, 0, 3, 1, 4)
            .unbind(0)
        )  # each [rows, heads, columns, head width]
        attended = UNSCALED_SDPA(query, key, value, bias)
        hidden = hidden + layer.out(attended.transpose(1, 2).reshape(rows, columns, -1))
        return layer.feed_forward(hidden)
