"""Parity verification: does a converted engine generate what the transformers reference does?

Float32 conversions must match the reference token for token (greedy decoding is
deterministic). Quantised ones cannot: int8 rounding changes near-tied choices, after which
greedy continuations legitimately diverge, so they are judged by agreement rates: on the first
generated token (same context for both engines) and on the tokens produced before the first
divergence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from app.engines.base import Engine, EngineRequest, SamplingParams

GREEDY = SamplingParams()


@dataclass(frozen=True)
class ParityReport:
    """Greedy token ids of the reference and the candidate, prompt by prompt."""

    reference: list[list[int]]
    candidate: list[list[int]]

    @property
    def identical(self) -> bool:
        return self.reference == self.candidate

    @property
    def first_token_agreement(self) -> float:
        """Share of prompts whose first generated token is the reference's: the one position
        where both engines decide from exactly the same context."""
        pairs = list(zip(self.reference, self.candidate, strict=True))
        same = sum(1 for want, got in pairs if want[:1] == got[:1])
        return same / len(pairs) if pairs else 1.0

    @property
    def agreement(self) -> float:
        """Share of reference tokens the candidate reproduced before diverging."""
        agreed = total = 0
        for expected, actual in zip(self.reference, self.candidate, strict=True):
            total += len(expected)
            for want, got in zip(expected, actual, strict=False):
                if want != got:
                    break
                agreed += 1
        return agreed / total if total else 1.0


def greedy_tokens(
    engine: Engine, prompts: Sequence[list[int]], max_new_tokens: int, *, batched: bool
) -> list[list[int]]:
    """Greedy token ids for every prompt, as one batch or one prompt at a time."""

    def requests(batch: Sequence[list[int]]) -> list[EngineRequest]:
        return [EngineRequest(prompt_ids=list(p), max_new_tokens=max_new_tokens) for p in batch]

    if batched:
        return [g.token_ids for g in engine.generate(requests(prompts), GREEDY)]
    return [engine.generate(requests([p]), GREEDY)[0].token_ids for p in prompts]
