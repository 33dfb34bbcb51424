"""Scoring a token sequence: the log-probability of each token given the ones before it.

This is what OpenAI's legacy `echo` + `logprobs` returns for the prompt, and what
lm-evaluation-harness's multiple-choice tasks read: it sends context + continuation as one
prompt and sums the continuation's log-probabilities. Every engine only supplies one forward
pass (`Engine.next_token_logprobs`: row `t` is the log-softmax distribution of token `t + 1`);
picking each token's own log-probability and the `top_n` most likely alternatives is shared.

Scores are the model's own distribution (no temperature, top-k or repetition penalty), as vLLM
reports them by default; only decoder-only models can score a prompt (an encoder-decoder model
does not predict its input).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TokenScore:
    """One token of a scored sequence.

    `logprob` is None for the first token (nothing predicts it, as OpenAI reports it); `top`
    holds the `top_n` most likely token ids at this position with their log-probabilities, best
    first (empty for the first token).
    """

    id: int
    logprob: float | None
    top: tuple[tuple[int, float], ...] = ()


def top_alternatives(logprobs: np.ndarray, top_n: int) -> list[tuple[tuple[int, float], ...]]:
    """The `top_n` best `(id, logprob)` of each row of `logprobs` (shape `[T, vocab]`)."""
    if top_n <= 0 or logprobs.shape[0] == 0:
        return [() for _ in range(logprobs.shape[0])]
    top_n = min(top_n, logprobs.shape[1])
    best = np.argpartition(-logprobs, top_n - 1, axis=1)[:, :top_n]
    rows = []
    for row, ids in zip(logprobs, best, strict=True):
        ordered = sorted(((int(i), float(row[i])) for i in ids), key=lambda pair: -pair[1])
        rows.append(tuple(ordered))
    return rows


def score_tokens(ids: Sequence[int], logprobs: np.ndarray, top_n: int) -> list[TokenScore]:
    """Every token of `ids` with its log-probability under `logprobs`, the engine's
    next-token distributions for `ids[:-1]` (shape `[len(ids) - 1, vocab]`)."""
    if len(ids) < 2:
        return [TokenScore(int(token_id), None) for token_id in ids]
    expected = (len(ids) - 1, logprobs.shape[-1]) if logprobs.ndim == 2 else None
    if logprobs.shape != expected:
        raise ValueError(f"expected logprobs of shape {expected}, got {logprobs.shape}")
    tops = top_alternatives(logprobs, top_n)
    scores = [TokenScore(int(ids[0]), None)]
    for position, token_id in enumerate(ids[1:]):
        own = float(logprobs[position, token_id])
        scores.append(TokenScore(int(token_id), own, tops[position]))
    return scores
