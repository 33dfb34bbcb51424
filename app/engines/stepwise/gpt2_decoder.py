"""GPT-2's decoder one token per row (LaMini-GPT and LaMini-Cerebras), computed here from its
blocks' weights.

A decode step through transformers' `GPT2Model` builds a four-dimensional attention mask, wraps
every layer's cache update and attention call in argument handling, and dispatches each block
through module calls; at a few rows that fixed cost is a good part of the step, since the
products are small. Computed here, the same operations on the same modules in the same order
(so the same logits: float32 and int8 alike), without the mask or the plumbing:

- the token and position embeddings summed, each block's `ln_1`, its query/key/value
  projection (`c_attn`, one product already), the new keys and values written to the cache,
  each row's attention over its own columns (`attend_by_rows`, scores scaled by
  1/sqrt(head width) as transformers' SDPA attention does), `c_proj`, the residual, `ln_2`,
  the MLP and the residual again; `ln_f` and the output projection.

Measured (full LaMini-GPT-124M twin, int8, 2-core AVX2-only AMD EPYC, in process, a step's
median over 15, alternated with the step through transformers, which ran first every other
round - the second run of a round is the slower, so a fixed order misleads): the median of
eight rounds 1.19x faster at one row, 1.23x at 8 rows (~26-30 -> ~20-22 ms), 1.15x at 32 and,
four rounds, 1.12x at 96; the same tokens. Where the products are faster (AVX512, AMX) the
plumbing is a larger share.

Prefill chunks still run through transformers (`causal.py`): they are few and wide, and their
time is the products'. Dropout is left out (inference).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache, PreTrainedModel

from app.engines.stepwise.row_groups import RowWidths, attend_by_rows


@dataclass(frozen=True)
class _Block:
    """One GPT-2 block's modules, in the order a step uses them."""

    attention_norm: nn.LayerNorm
    query_key_value: nn.Module  # `c_attn`: the three projections side by side
    attention_out: nn.Module
    feed_forward_norm: nn.LayerNorm
    feed_forward: nn.Module  # `mlp`: c_fc, the activation, c_proj


class GPT2DecoderStep:
    """The logits of one decode step of a GPT-2 model (see the module's docstring)."""

    def __init__(self, model: PreTrainedModel) -> None:
        body = model.transformer
        self._heads = model.config.n_head
        self._head_width = model.config.n_embd // self._heads
        self._embed_tokens, self._embed_positions = body.wte, body.wpe
        self._blocks = [
            _Block(
                attention_norm=block.ln_1,
                query_key_value=block.attn.c_attn,
                attention_out=block.attn.c_proj,
                feed_forward_norm=block.ln_2,
                feed_forward=block.mlp,
            )
            for block in body.h
        ]
        self._final_norm = body.ln_f
        self._head = model.get_output_embeddings()

    def __call__(
        self,
        next_ids: torch.Tensor,
        positions: torch.Tensor,
        cache: DynamicCache,
        mask: torch.Tensor,
        rows: RowWidths,
    ) -> torch.Tensor:
        """The logits ([rows, vocabulary]) of `next_ids` ([rows]) at `positions` ([rows]),
        appended to the rows' cache (left-padded; `mask` [rows, columns] covers its columns
        and the new one); each row attends over its own last `rows` columns."""
        count = int(next_ids.shape[0])
        hidden = self._embed_tokens(next_ids) + self._embed_positions(positions)
        # read only where rows are attended by groups (no compiled row loop): a group's
        # shorter rows have padding among its columns
        groups_mask = mask[:, None, None, :].bool()
        for index, block in enumerate(self._blocks):
            query, key, value = (
                block.query_key_value(block.attention_norm(hidden))
                .view(count, 3, self._heads, 1, self._head_width)
                .unbind(1)
            )
            keys, values = cache.layers[index].update(key, value)
            attended = attend_by_rows(
                F.scaled_dot_product_attention, query, keys, values, groups_mask, rows
            )
            hidden = block.attention_out(attended.reshape(count, -1)) + hidden
            hidden = hidden + block.feed_forward(block.feed_forward_norm(hidden))
        return self._head(self._final_norm(hidden))
