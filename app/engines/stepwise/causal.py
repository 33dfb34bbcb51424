"""Decoder-only models (GPT-2/Cerebras, GPT-Neo, OPT) one step at a time.

Prompts are left-padded, so every row's next token goes into the same new cache column and
one attention mask hides each row's padding. Each row passes its own position ids (its count
of real tokens): GPT-2 and GPT-Neo have absolute position tables, and OPT would otherwise
derive positions from the whole mask on every step. GPT-Neo's local attention window counts
cache columns back from the query, the same for every row however much padding it has.

Prefill runs in chunks of columns (`advance`), each attending to the cache the earlier chunks
left, so a long prompt can be spread over several scheduler turns and the running batch keeps
decoding in between; in float32 the tokens are the same as from one pass. Only the last chunk
computes the output projection, for the last position only.

GPT-2's decode steps (LaMini-GPT, LaMini-Cerebras) run `gpt2_decoder.py`, the same operations
without transformers' mask and module plumbing; OPT's and GPT-Neo's run transformers' model.

A prompt whose start is in the prefix cache (`prefix_cache.py`) has those columns copied in,
not computed: the batch's prefill starts at the first column some row has no cached state for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache, PreTrainedModel

from app.engines.stepwise.gpt2_decoder import GPT2DecoderStep
from app.engines.stepwise.gpt_neo_row_groups import group_gpt_neo_attention
from app.engines.stepwise.prefix_cache import PrefixHit
from app.engines.stepwise.row_groups import (
    ROW_GROUPS_ATTENTION,
    DecodeSplit,
    RowWidths,
    decoding_in_groups,
)
from app.engines.stepwise.rows import stack_rows
from app.engines.stepwise.slots import CacheFormat, append_rows, compaction_order, keep_rows


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


@dataclass
class CausalPrefill:
    """Prompts being prefilled: left-padded ids, their mask and positions, the cache so far."""

    ids: torch.Tensor  # [rows, columns]
    mask: torch.Tensor
    positions: torch.Tensor
    cache: DynamicCache
    done: int = 0  # columns already in the cache

    @property
    def size(self) -> int:
        return int(self.ids.shape[0])

    @property
    def columns(self) -> int:
        """Columns in the cache so far."""
        return self.done

    @property
    def remaining(self) -> int:
        """Columns still to compute."""
        return int(self.ids.shape[1]) - self.done


class CausalStepper:
    """Prefill and decode steps of a decoder-only model; it owns no state of its own."""

    def __init__(self, model: PreTrainedModel, pad_token_id: int, cache: CacheFormat) -> None:
        self._model = model
        self.cache_format = cache
        # decode steps read only each row's own columns: GPT-2's and OPT's attention
        # through transformers' attention interface (`row_groups.py`), GPT-Neo's own code
        # made to (`gpt_neo_row_groups.py`)
        if model.config.model_type == "gpt_neo":
            group_gpt_neo_attention(model)
        elif getattr(model, "_supports_attention_backend", False):
            model.set_attn_implementation(ROW_GROUPS_ATTENTION)
        self._body = model.base_model
        self._head = model.get_output_embeddings()
        self._pad = pad_token_id
        # GPT-2's decode steps skip transformers' plumbing (`gpt2_decoder.py`)
        self._gpt2_step = GPT2DecoderStep(model) if model.config.model_type == "gpt2" else None

    def start(
        self, prompts: Sequence[Sequence[int]], hits: Sequence[PrefixHit | None] = ()
    ) -> CausalPrefill:
        """New prompts as one left-padded batch, nothing computed yet but the columns every
        row has cached (`hits`, one per prompt, if given)."""
        width = max(len(prompt) for prompt in prompts)
        ids = torch.full((len(prompts), width), self._pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            mask[row, width - len(prompt) :] = 1
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        prefill = CausalPrefill(ids, mask, positions, self.cache_format.new_cache("left"))
        if any(hit is not None for hit in hits):
            _restore_cached(prefill, prompts, hits)
        return prefill

    def prompt_states(self, prefill: CausalPrefill, row: int, tokens: int) -> torch.Tensor:
        """Row `row`'s last `tokens` columns of a finished prefill (its prompt's, left-padded)
        as one `[layers, 2, heads, tokens, head_dim]` tensor of its own: a prefix-cache entry."""
        return torch.stack(
            [
                torch.stack([layer.keys[row, :, -tokens:], layer.values[row, :, -tokens:]])
                for layer in prefill.cache.layers
            ]
        )

    def advance(
        self, prefill: CausalPrefill, columns: int
    ) -> tuple[CausalRows, torch.Tensor] | None:
        """Compute the next `columns` columns (at least one) of `prefill`; once it is complete,
        its rows and their next-token logits."""
        begin = prefill.done
        end = min(begin + max(1, columns), begin + prefill.remaining)
        hidden = self._body(
            input_ids=prefill.ids[:, begin:end],
            attention_mask=prefill.mask[:, :end],
            position_ids=prefill.positions[:, begin:end],
            past_key_values=prefill.cache,
            use_cache=True,
        ).last_hidden_state
        prefill.done = end
        if prefill.remaining:
            return None
        lengths = prefill.mask.sum(dim=1)
        rows = CausalRows(
            prefill.cache, prefill.mask, lengths, next_ids=lengths.new_zeros(prefill.size)
        )
        return rows, self._head(hidden[:, -1])

    def decode(self, rows: CausalRows) -> torch.Tensor:
        """Feed every row its next token; return the logits that follow."""
        rows.mask = torch.cat([rows.mask, rows.mask.new_ones((rows.size, 1))], dim=1)
        widths = RowWidths(tuple((rows.lengths + 1).tolist()))
        with decoding_in_groups(DecodeSplit(self_rows=widths)):
            if self._gpt2_step is not None:
                logits = self._gpt2_step(rows.next_ids, rows.lengths, rows.cache, rows.mask, widths)
            else:
                hidden = self._body(
                    input_ids=rows.next_ids[:, None],
                    attention_mask=rows.mask,
                    position_ids=rows.lengths[:, None],
                    past_key_values=rows.cache,
                    use_cache=True,
                ).last_hidden_state
                logits = self._head(hidden[:, -1])
        rows.lengths = rows.lengths + 1
        return logits

    def join(self, running: CausalRows, joining: CausalRows) -> CausalRows:
        """`joining`'s rows after `running`'s (the cache grows in place)."""
        return CausalRows(
            cache=append_rows(running.cache, joining.cache),
            mask=stack_rows(running.mask, joining.mask, 1, "left"),
            lengths=torch.cat([running.lengths, joining.lengths]),
            next_ids=torch.cat([running.next_ids, joining.next_ids]),
        )

    def keep(self, rows: CausalRows, keep: Sequence[int]) -> tuple[CausalRows, list[int]]:
        """Only the rows `keep` (ascending), without the leading columns none of them uses any
        more; returns them and which old row each new row is (`compaction_order`)."""
        order = compaction_order(rows.size, keep)
        index = torch.tensor(order, dtype=torch.long)
        lengths = rows.lengths[index]
        width = int(lengths.max())
        kept = CausalRows(
            cache=keep_rows(rows.cache, order, width),
            mask=rows.mask[index, -width:],
            lengths=lengths,
            next_ids=rows.next_ids[index],
        )
        return kept, order

    def cache_bytes(self, rows: CausalRows) -> int:
        return rows.size * rows.columns * self.cache_format.bytes_per_token

    def peak_bytes(self, horizons: Sequence[tuple[int, int]]) -> int:
        """The most cache rows with these `(prompt tokens, new tokens)` can ever hold: the
        cache is as wide as its longest live row, so at most rows x the longest horizon."""
        if not horizons:
            return 0
        longest = max(prompt + new for prompt, new in horizons)
        return len(horizons) * longest * self.cache_format.bytes_per_token

    def repetition_context(self, prompt: Sequence[int]) -> Sequence[int]:
        """The tokens a repetition penalty starts from: the prompt (as transformers does)."""
        return prompt


def _restore_cached(
    prefill: CausalPrefill, prompts: Sequence[Sequence[int]], hits: Sequence[PrefixHit | None]
) -> None:
    """Copy the cached columns in up to the first one a row still has to compute; padding
    columns are zeros, as a computed prefill leaves them (see `slots.py`: never unwritten)."""
    width = prefill.ids.shape[1]
    cached = [0 if hit is None else hit.tokens for hit in hits]
    begin = width - max(len(p) - c for p, c in zip(prompts, cached, strict=True))
    if begin <= 0:
        return
    like = next(hit.states for hit in hits if hit is not None)
    layers, _, heads, _, head_dim = like.shape
    shape = (prefill.size, heads, begin, head_dim)
    for layer in range(layers):
        keys = torch.empty(shape, dtype=like.dtype, device=like.device)
        values = torch.empty(shape, dtype=like.dtype, device=like.device)
        for row, (prompt, hit) in enumerate(zip(prompts, hits, strict=True)):
            first = min(width - len(prompt), begin)
            keys[row, :, :first] = 0
            values[row, :, :first] = 0
            if first < begin:  # then the row has a hit of at least begin - first tokens
                keys[row, :, first:] = hit.states[layer, 0, :, : begin - first]
                values[row, :, first:] = hit.states[layer, 1, :, : begin - first]
        prefill.cache.update(keys, values, layer)
    prefill.done = begin
