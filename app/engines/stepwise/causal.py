"""Decoder-only models (GPT-2/Cerebras, GPT-Neo, OPT) one step at a time.

Prompts are left-padded, so every row's next token goes into the same new cache column and
one attention mask hides each row's padding. Each row passes its own position ids (its count
of real tokens): GPT-2 and GPT-Neo have absolute position tables, and OPT would otherwise
derive positions from the whole mask on every step. GPT-Neo's local attention window counts
cache columns back from the query, the same for every row however much padding it has.
Prefill computes the output projection for the last position only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache, PreTrainedModel

from app.engines.stepwise.rows import select_cache, stack_caches, stack_rows


@dataclass
class CausalRows:
    """The running rows: their cache, mask and lengths, and the token each feeds next."""

    cache: DynamicCache
    mask: torch.Tensor  # [rows, columns]: 1 for a real token, 0 for padding
    lengths: torch.Tensor  # [rows]: real tokens in the cache (= the next position id)
    next_ids: torch.Tensor  # [rows]

    @property
    def size(self) -> int:
        return int(self.lengths.shape[0])

    @property
    def columns(self) -> int:
        return int(self.mask.shape[1])


class CausalStepper:
    """Prefill and decode steps of a decoder-only model; it owns no state of its own."""

    def __init__(self, model: PreTrainedModel, pad_token_id: int, bytes_per_token: int) -> None:
        self._model = model
        self._body = model.base_model
        self._head = model.get_output_embeddings()
        self._pad = pad_token_id
        self.bytes_per_token = bytes_per_token

    def prefill(self, prompts: Sequence[Sequence[int]]) -> tuple[CausalRows, torch.Tensor]:
        """Run new prompts as their own batch; return their rows and next-token logits."""
        width = max(len(prompt) for prompt in prompts)
        ids = torch.full((len(prompts), width), self._pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            mask[row, width - len(prompt) :] = 1
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        cache = DynamicCache()
        hidden = self._body(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
        ).last_hidden_state
        lengths = mask.sum(dim=1)
        rows = CausalRows(cache, mask, lengths, next_ids=lengths.new_zeros(len(prompts)))
        return rows, self._head(hidden[:, -1])

    def decode(self, rows: CausalRows) -> torch.Tensor:
        """Feed every row its next token; return the logits that follow."""
        rows.mask = torch.cat([rows.mask, rows.mask.new_ones((rows.size, 1))], dim=1)
        hidden = self._body(
            input_ids=rows.next_ids[:, None],
            attention_mask=rows.mask,
            position_ids=rows.lengths[:, None],
            past_key_values=rows.cache,
            use_cache=True,
        ).last_hidden_state
        rows.lengths = rows.lengths + 1
        return self._head(hidden[:, -1])

    def join(self, running: CausalRows, joining: CausalRows) -> CausalRows:
        return CausalRows(
            cache=stack_caches(running.cache, joining.cache, "left"),
            mask=stack_rows(running.mask, joining.mask, 1, "left"),
            lengths=torch.cat([running.lengths, joining.lengths]),
            next_ids=torch.cat([running.next_ids, joining.next_ids]),
        )

    def keep(self, rows: CausalRows, keep: torch.Tensor) -> CausalRows:
        """Only the rows `keep`, without the leading columns none of them uses any more."""
        lengths = rows.lengths[keep]
        width = int(lengths.max())
        return CausalRows(
            cache=select_cache(rows.cache, keep, width, "left"),
            mask=rows.mask[keep, -width:],
            lengths=lengths,
            next_ids=rows.next_ids[keep],
        )

    def cache_bytes(self, rows: CausalRows) -> int:
        return rows.size * rows.columns * self.bytes_per_token

    def peak_bytes(self, horizons: Sequence[tuple[int, int]]) -> int:
        """The most cache rows with these `(prompt tokens, new tokens)` can ever hold: the
        cache is as wide as its longest live row, so at most rows x the longest horizon."""
        if not horizons:
            return 0
        longest = max(prompt + new for prompt, new in horizons)
        return len(horizons) * longest * self.bytes_per_token

    def repetition_context(self, prompt: Sequence[int]) -> Sequence[int]:
        """The tokens a repetition penalty starts from: the prompt (as transformers does)."""
        return prompt
