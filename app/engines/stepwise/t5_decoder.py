"""T5's decoder one token per row, computed here from its layers' weights.

A decode step through transformers' `T5ForConditionalGeneration` is a few hundred small
operations behind module calls, argument handling and cache wrappers, and at a few rows that
fixed cost is most of the step: on a 2-core AVX2-only AMD EPYC (int8, one row, ~130 columns of
past) LaMini-T5-61M's step took 8.9-14.2 ms, 5-6 ms of it in the int8 matrix products, and
Flan-T5-248M's 24-40 ms. Computed here, the same logits come out (to the last bit in those
measurements, int8 and float32) in 6.3-7.2 and 21-25 ms, by:

- one matrix product for each self-attention's query, key and value, and one for the gated
  feed-forward's two input projections (`stacked_linear`): int8 weights carry a scale per
  output row, so stacking the rows changes no output, and the activations are quantised once,
  not three times (twice); in float32 a wider product may sum in another order (~1e-7);
- one product for every layer's cross-attention keys and values of a joining input's encoder
  states (24 for Flan-T5-248M before; in process, int8: 40 tokens 5.3-6.0 -> 3.8-4.3 ms, 100
  tokens 12-15 -> 10-11 ms, 296 tokens ~34 -> ~29 ms, the same keys and values);
- T5's layer norm as torch's `rms_norm` (the same function, one operation);
- the relative position bias computed once a step (every layer shares the first layer's, as in
  transformers) and each row's attention over its own columns only (`attend_by_rows`).

Dropout is left out (inference) and so is the float16 clamping (no precision here is float16).
The stacked projections replace the decoder's originals, which would be a second copy of those
weights: transformers' decoder cannot run after, and nothing calls it (a joining input runs the
encoder and `cross_keys_values`, decode steps run here).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import DynamicCache, PreTrainedModel

from app.engines.stepwise.row_groups import (
    UNSCALED_SDPA,
    DecodeSplit,
    RowWidths,
    attend_by_rows,
    decoding_in_groups,
)
from app.engines.stepwise.rows import Side
from app.engines.stepwise.t5_layers import (
    FeedForward,
    StackPass,
    additive_mask,
    stacked_linear,
    take_query_key_value,
)


@dataclass(frozen=True)
class _DecoderLayer:
    """One decoder block's weights, in the order a step uses them (its cross-attention's key and
    value projections run once, when rows join: stacked with every block's,
    `_take_cross_keys_values`)."""

    self_norm: torch.Tensor
    query_key_value: nn.Module  # the three projections stacked
    self_out: nn.Module
    cross_norm: torch.Tensor
    cross_query: nn.Module
    cross_out: nn.Module
    feed_forward: FeedForward


class T5DecoderStep(StackPass):
    """The decoder of a T5 model (its projections stacked, see the module's docstring): the
    cross-attention keys and values of encoder states, and the logits of one step."""

    def __init__(self, model: PreTrainedModel) -> None:
        config = model.config
        decoder = model.get_decoder()
        super().__init__(decoder, config)
        self._layers = [_take_layer(block, self._epsilon) for block in decoder.block]
        self._cross_keys_values = _take_cross_keys_values(decoder.block)
        self._lm_head = model.get_output_embeddings()
        # tied embeddings: transformers rescales the decoder's output before the projection
        self._output_scale = config.d_model**-0.5 if config.tie_word_embeddings else None

    def cross_keys_values(self, states: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each layer's cross-attention keys and values of `states` ([rows, columns, width]),
        as [rows, heads, columns, head width]: what every step of those rows reads."""
        projected = self._cross_keys_values(states).chunk(2 * len(self._layers), dim=-1)
        return [
            (self._split_heads(keys), self._split_heads(values))
            for keys, values in zip(projected[::2], projected[1::2], strict=True)
        ]

    def __call__(
        self,
        next_ids: torch.Tensor,
        self_cache: DynamicCache,
        cross_cache: DynamicCache,
        mask: torch.Tensor,
        encoder_mask: torch.Tensor,
        split: DecodeSplit,
    ) -> torch.Tensor:
        """The logits ([rows, vocabulary]) of `next_ids` ([rows]) appended to the rows' decoder
        tokens (`self_cache`, left-padded; `mask` [rows, columns] covers them and the new one),
        reading encoder states' keys and values in `cross_cache` (right-padded, `encoder_mask`);
        each row attends over its own columns (`split`). Writes the new keys and values."""
        rows = int(next_ids.shape[0])
        hidden = self._embed(next_ids)  # [rows, width]: one token per row
        self_bias = self._position_bias(mask.shape[1]) + additive_mask(mask, hidden.dtype)
        cross_bias = additive_mask(encoder_mask, hidden.dtype)
        with decoding_in_groups(split):  # the cache gives its columns as stored
            for index, layer in enumerate(self._layers):
                normed = self._norm(hidden, layer.self_norm)
                query, key, value = (
                    layer.query_key_value(normed)
                    .view(rows, 3, self._heads, 1, self._head_width)
                    .unbind(1)
                )
                keys, values = self_cache.layers[index].update(key, value)
                attended = self._attend(query, keys, values, self_bias, split.self_rows, "left")
                hidden = hidden + layer.self_out(attended)

                normed = self._norm(hidden, layer.cross_norm)
                query = self._split_heads(layer.cross_query(normed)[:, None])
                cached = cross_cache.layers[index]
                attended = self._attend(
                    query, cached.keys, cached.values, cross_bias, split.cross_rows, "right"
                )
                hidden = hidden + layer.cross_out(attended)
                hidden = layer.feed_forward(hidden)
        hidden = self._norm(hidden, self._final_norm)
        if self._output_scale is not None:
            hidden = hidden * self._output_scale
        return self._lm_head(hidden)

    def _split_heads(self, states: torch.Tensor) -> torch.Tensor:
        """[rows, columns, heads x head width] as [rows, heads, columns, head width]."""
        rows, columns = states.shape[:2]
        return states.view(rows, columns, self._heads, self._head_width).transpose(1, 2)

    def _position_bias(self, columns: int) -> torch.Tensor:
        """[1, heads, 1, columns]: T5's relative position bias of the newest column's query."""
        newest = torch.tensor([columns - 1], device=self._final_norm.device)
        return self._relative_bias.compute_bias(columns, columns, cache_position=newest)

    def _attend(
        self,
        query: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        bias: torch.Tensor,
        rows: RowWidths | None,
        side: Side,
    ) -> torch.Tensor:
        """[rows, heads x head width]: T5 attention (unscaled scores, `bias` added) of one
        query per row over its own columns."""
        assert rows is not None  # a decode step splits both attentions
        attended = attend_by_rows(
            UNSCALED_SDPA, query, keys, values, bias, rows, scale=1.0, mask_is_bias=True, side=side
        )
        return attended.reshape(query.shape[0], self._heads * self._head_width)


def _take_layer(block: nn.Module, epsilon: float) -> _DecoderLayer:
    """A decoder block's weights, its self-attention's and gated feed-forward's input
    projections stacked (and the originals dropped from the block)."""
    self_attention, cross_attention, feed_forward = block.layer
    cross = cross_attention.EncDecAttention
    return _DecoderLayer(
        self_norm=self_attention.layer_norm.weight,
        query_key_value=take_query_key_value(self_attention.SelfAttention),
        self_out=self_attention.SelfAttention.o,
        cross_norm=cross_attention.layer_norm.weight,
        cross_query=cross.q,
        cross_out=cross.o,
        feed_forward=FeedForward.take(feed_forward, epsilon),
    )


def _take_cross_keys_values(blocks: nn.ModuleList) -> nn.Module:
    """Every block's cross-attention key and value projections as one (`stacked_linear`),
    their outputs side by side (layer by layer, keys before values), the originals dropped
    from the blocks (not kept twice)."""
    attentions = [block.layer[1].EncDecAttention for block in blocks]
    stacked = stacked_linear([linear for a in attentions for linear in (a.k, a.v)])
    for attention in attentions:
        del attention.k, attention.v
    return stacked
