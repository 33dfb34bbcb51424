"""T5's decoder attention, when decoding, reading each row's own columns.

`row_groups.py` says why (a padded cache makes every row read the longest row's columns) and
plans the split; GPT-2 and OPT take it through transformers' attention interface. T5's
attention is its own code (scores by matrix products, the relative position bias added), so its
decoder layers' attention modules become `GroupedT5Attention`, which computes the same thing
row by row (`attend_by_rows`, its bias and mask added to the scores) inside
`decoding_in_groups`, and is transformers' `T5Attention` otherwise
(any use outside a decode step).

Both of a decoder layer's attentions are split: self-attention over the decoder cache
(left-padded: a row's real columns are its last ones) and cross-attention over the encoder
states (right-padded: its first ones). Measured on a 2-core AVX2-only AMD EPYC (full
Flan-T5-248M twin, int8, 32 rows with inputs of 15-350 tokens): the attention's matrix products
were 43 % of a decode step, plus 5 % copying the cache views they cannot read in place; SDPA
reads them in place, and so does the float32 loop of `row_attention.py`.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedModel
from transformers.models.t5.modeling_t5 import T5Attention

from app.engines.stepwise.row_groups import UNSCALED_SDPA, attend_by_rows, current_split


class GroupedT5Attention(T5Attention):
    """`T5Attention` that, inside `decoding_in_groups`, attends one query per row
    over the row's own columns."""

    def forward(  # type: ignore[override]  # transformers' own signature, by keyword
        self,
        hidden_states: torch.Tensor,
        mask: torch.Tensor | None = None,
        key_value_states: torch.Tensor | None = None,
        position_bias: torch.Tensor | None = None,
        past_key_values: Any = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, ...]:
        cross = key_value_states is not None
        split = current_split()
        rows_split = split.cross_rows if cross else split.self_rows
        plain = kwargs.get("output_attentions") or kwargs.get("layer_head_mask") is not None
        if rows_split is None or plain or self.pruned_heads or hidden_states.shape[1] != 1:
            return super().forward(
                hidden_states, mask, key_value_states, position_bias, past_key_values, **kwargs
            )
        rows = hidden_states.shape[0]
        query = self.heads(self.q(hidden_states))
        if cross:  # filled when the rows joined (`Seq2SeqStepper.advance`)
            layer = past_key_values.cross_attention_cache.layers[self.layer_idx]
            keys, values = layer.keys, layer.values
        else:
            keys, values = past_key_values.self_attention_cache.update(
                self.heads(self.k(hidden_states)),
                self.heads(self.v(hidden_states)),
                self.layer_idx,
                {"cache_position": kwargs.get("cache_position")},
            )
        if position_bias is None:  # the first layer computes it; the others are passed it
            position_bias = self._position_bias(
                keys.shape[2], mask, kwargs.get("cache_position"), query.dtype
            )
        attended = attend_by_rows(
            UNSCALED_SDPA,
            query,
            keys,
            values,
            position_bias.expand(rows, -1, -1, -1),  # bias and mask, added to the scores
            rows_split,
            scale=1.0,
            mask_is_bias=True,
            side="right" if cross else "left",
        )
        attended = attended.transpose(1, 2).reshape(rows, 1, self.inner_dim)
        return self.o(attended), position_bias

    def heads(self, states: torch.Tensor) -> torch.Tensor:
        """[rows, columns, inner] as [rows, heads, columns, head width]."""
        return states.view(states.shape[0], -1, self.n_heads, self.key_value_proj_dim).transpose(
            1, 2
        )

    def _position_bias(
        self,
        key_length: int,
        mask: torch.Tensor | None,
        cache_position: torch.Tensor | None,
        dtype: torch.dtype,
    ) -> torch.Tensor:
        """What `T5Attention` adds to one query's scores: its relative position bias (zero
        for cross-attention), plus the mask."""
        if self.has_relative_attention_bias:
            bias = self.compute_bias(key_length, key_length, cache_position=cache_position)
            bias = bias[:, :, -1:, :]
        else:
            bias = torch.zeros((1, self.n_heads, 1, key_length), dtype=dtype)
        return bias if mask is None else bias + mask[:, :, :, :key_length]


def group_decoder_attention(model: PreTrainedModel) -> None:
    """Make every decoder attention module of the T5 `model` a `GroupedT5Attention` (the same
    module, weights untouched)."""
    for block in model.get_decoder().block:
        for attention in (block.layer[0].SelfAttention, block.layer[1].EncDecAttention):
            attention.__class__ = GroupedT5Attention
