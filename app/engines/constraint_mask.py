"""Applying a response grammar to a row's scores, for every engine that computes logits in torch.

`TokenConstraint.allowed()` (app/engines/grammar.py) says which tokens may come next; here the
others get a score of minus infinity, so greedy choice and every sampling warper pick among
allowed tokens only. A vocabulary row wider than the tokenizer's (padded embedding tables)
keeps its extra ids blocked. When nothing is allowed any more (the grammar is complete), eos
gets its score back so the sequence ends the usual way.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from app.engines.grammar import TokenConstraint


def mask_disallowed(
    scores: torch.Tensor, constraint: TokenConstraint, eos_ids: Sequence[int]
) -> torch.Tensor:
    """One row's scores [vocab] with every token the grammar does not allow at -inf."""
    allowed = torch.from_numpy(constraint.allowed()).to(scores.device)
    width = min(allowed.shape[0], scores.shape[-1])
    blocked = torch.ones(scores.shape[-1], dtype=torch.bool, device=scores.device)
    blocked[:width] = ~allowed[:width]
    masked = scores.masked_fill(blocked, float("-inf"))
    if bool(torch.isinf(masked).all()) and eos_ids:
        masked[list(eos_ids)] = 0.0
    return masked
