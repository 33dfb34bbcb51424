"""GPT-Neo's attention, when decoding, reading each row's own columns.

`row_groups.py` says why and plans the split. GPT-Neo's attention is its own code (unscaled
scores in float32, a causal buffer that is also its local window), so its attention modules
become `GroupedGPTNeoAttention`, which computes the same thing row by row (`attend_by_rows`;
GPT-Neo's scores are float32 in any dtype, so always the loop of `row_attention.py`) inside
`decoding_in_groups`, and is transformers' `GPTNeoSelfAttention` otherwise (prefill
chunks, any other use). A local layer's query sees only the cache's last `window_size` columns
(counted back from the query, padding included, as `causal.py` says), so a row there reads
at most those.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel
from transformers.models.gpt_neo.modeling_gpt_neo import GPTNeoSelfAttention

from app.engines.stepwise.row_groups import UNSCALED_SDPA, attend_by_rows, current_split


class GroupedGPTNeoAttention(GPTNeoSelfAttention):
    """`GPTNeoSelfAttention` that, inside `decoding_in_groups`, attends one query per row
    over the row's own columns."""

    window: int | None  # a local layer's window in columns; None: global

    def _attn(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, None]:
        rows = current_split().self_rows
        if rows is None or head_mask is not None or query.shape[2] != 1:
            return super()._attn(query, key, value, attention_mask, head_mask)
        # GPT-Neo computes its scores in float32 whatever the model's dtype
        mask = None if attention_mask is None else attention_mask[..., : key.shape[2]].float()
        attended = attend_by_rows(
            UNSCALED_SDPA,
            query.float(),
            key,
            value,
            mask,
            rows,
            scale=1.0,
            window=self.window,
        )
        return attended.to(value.dtype), None


def group_gpt_neo_attention(model: PreTrainedModel) -> None:
    """Make every attention module of the GPT-Neo `model` a `GroupedGPTNeoAttention` (the same
    module, weights untouched)."""
    config = model.config
    for block in model.base_model.h:
        attention = block.attn.attention
        if type(attention) is not GPTNeoSelfAttention:  # flash attention: its own kernel
            continue
        attention.__class__ = GroupedGPTNeoAttention
        local = config.attention_layers[attention.layer_id] == "local"
        attention.window = config.window_size if local else None
