"""Choosing the next token of every row of a running batch, each row with its own settings.

Rows with different sampling settings share one batch, so every setting is a per-row tensor
and the whole batch is processed at once: repetition penalty, the minimum length, temperature,
top-k and top-p, in transformers' order. Greedy rows take the argmax. A seeded row draws from
its own `torch.Generator`, so its tokens do not depend on who else is in the batch; unseeded
rows share one draw. Log-probabilities are those of the distribution the token was chosen
from (after every processor), as the transformers engine reports them.

`RowLogitsProcessor` is how a row's response grammar (`EngineRequest.constraint`) applies: a
row that has one gets its scores passed through it before anything is chosen.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from app.engines.base import SamplingParams

# (token ids generated so far, this row's scores [vocab]) -> the scores to choose from.
RowLogitsProcessor = Callable[[Sequence[int], torch.Tensor], torch.Tensor]


@dataclass
class RowSampling:
    """One row's settings, and its own random stream when it is seeded."""

    params: SamplingParams
    generator: torch.Generator | None = None
    processor: RowLogitsProcessor | None = None

    @classmethod
    def for_request(
        cls, params: SamplingParams, processor: RowLogitsProcessor | None = None
    ) -> RowSampling:
        generator = None
        if params.do_sample and params.seed is not None:
            generator = torch.Generator().manual_seed(params.seed)
        return cls(params, generator, processor)


class BatchSampler:
    """The per-row settings of a batch as tensors; rebuilt when rows join or leave."""

    def __init__(self, rows: Sequence[RowSampling], eos_ids: Sequence[int]) -> None:
        self.rows = list(rows)
        params = [row.params for row in self.rows]
        self._eos = torch.tensor(sorted(eos_ids), dtype=torch.long)
        self._penalty = torch.tensor([p.repetition_penalty for p in params])[:, None]
        self._uses_penalty = bool((self._penalty != 1.0).any())
        self._min_new = torch.tensor([p.min_new_tokens for p in params])
        sampled = [i for i, p in enumerate(params) if p.do_sample]
        self._sampled = torch.tensor(sampled, dtype=torch.long)
        self._greedy = torch.tensor(
            [i for i, p in enumerate(params) if not p.do_sample], dtype=torch.long
        )
        self._temperature = torch.tensor([params[i].temperature for i in sampled])[:, None]
        self._top_k = torch.tensor([params[i].top_k for i in sampled], dtype=torch.long)
        self._top_p = torch.tensor([params[i].top_p for i in sampled])[:, None]
        self._seeded = [(k, self.rows[i].generator) for k, i in enumerate(sampled)]
        self._seeded = [(k, g) for k, g in self._seeded if g is not None]
        self._processed = [(i, row.processor) for i, row in enumerate(self.rows) if row.processor]

    def choose(
        self,
        logits: torch.Tensor,
        seen: torch.Tensor | None,
        generated: torch.Tensor,
        history: Callable[[int], Sequence[int]],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`(token ids, log-probabilities)` for the last-position `logits` [rows, vocab].

        `seen` marks the tokens each row's repetition penalty applies to; `generated` counts
        each row's tokens so far (for `min_new_tokens`); `history(row)` is what that row's
        processor sees (asked only for rows that have one).
        """
        scores = logits.float()
        if self._uses_penalty and seen is not None:
            penalised = torch.where(scores > 0, scores / self._penalty, scores * self._penalty)
            scores = torch.where(seen, penalised, scores)
        too_short = generated < self._min_new
        if bool(too_short.any()) and self._eos.numel():
            rows = too_short.nonzero().squeeze(1)
            scores[rows[:, None], self._eos[None, :]] = -float("inf")
        for i, processor in self._processed:
            scores[i] = processor(history(i), scores[i])
        chosen = torch.empty(scores.shape[0], dtype=torch.long)
        if self._greedy.numel():
            chosen[self._greedy] = scores[self._greedy].argmax(dim=-1)
        if self._sampled.numel():
            warped = self._warp(scores[self._sampled])
            scores[self._sampled] = warped
            chosen[self._sampled] = self._draw(torch.softmax(warped, dim=-1))
        logprobs = torch.log_softmax(scores, dim=-1).gather(1, chosen[:, None]).squeeze(1)
        return chosen, logprobs

    def _warp(self, scores: torch.Tensor) -> torch.Tensor:
        """Temperature, then top-k, then top-p, each with every row's own value."""
        scores = scores / self._temperature
        vocab = scores.shape[-1]
        ordered, order = scores.sort(dim=-1, descending=True)
        k = torch.where(self._top_k > 0, self._top_k.clamp(max=vocab), vocab)
        kth = ordered.gather(1, (k - 1)[:, None])
        ordered = ordered.masked_fill(ordered < kth, -float("inf"))
        probs = torch.softmax(ordered, dim=-1)
        before = probs.cumsum(dim=-1) - probs
        # A token goes when the ones ranked above it already hold top_p; the first always stays.
        ordered = ordered.masked_fill((before >= self._top_p) & (self._top_p < 1), -float("inf"))
        return torch.full_like(scores, -float("inf")).scatter(1, order, ordered)

    def _draw(self, probs: torch.Tensor) -> torch.Tensor:
        """One token per sampled row; seeded rows from their own generator."""
        drawn = torch.multinomial(probs, 1).squeeze(1)
        for k, generator in self._seeded:
            drawn[k] = torch.multinomial(probs[k], 1, generator=generator)[0]
        return drawn
