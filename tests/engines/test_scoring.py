"""Scoring a token sequence from an engine's next-token log-probabilities (echo + logprobs)."""

from __future__ import annotations

import numpy as np
import pytest

from app.engines.scoring import TokenScore, score_tokens, top_alternatives

# Row t: the distribution of the token after position t, over a vocabulary of 4.
LOGPROBS = np.log(np.array([[0.1, 0.6, 0.2, 0.1], [0.25, 0.25, 0.4, 0.1]], dtype=np.float32))


def test_first_token_has_no_logprob_and_the_others_their_own() -> None:
    scores = score_tokens([3, 1, 2], LOGPROBS, top_n=0)
    assert scores[0] == TokenScore(3, None)
    assert [s.id for s in scores] == [3, 1, 2]
    assert scores[1].logprob == pytest.approx(np.log(0.6))
    assert scores[2].logprob == pytest.approx(np.log(0.4))
    assert scores[1].top == ()


def test_top_alternatives_are_the_likeliest_best_first() -> None:
    (first, second) = top_alternatives(LOGPROBS, 2)
    assert [token for token, _ in first] == [1, 2]
    assert second[0][0] == 2
    assert first[0][1] == pytest.approx(np.log(0.6))


def test_top_n_larger_than_the_vocabulary_lists_it_all() -> None:
    (first, _) = top_alternatives(LOGPROBS, 10)
    assert len(first) == 4


def test_a_single_token_needs_no_forward_pass() -> None:
    assert score_tokens([7], np.zeros((0, 0), dtype=np.float32), top_n=3) == [TokenScore(7, None)]


def test_logprobs_of_the_wrong_shape_are_refused() -> None:
    with pytest.raises(ValueError, match="shape"):
        score_tokens([1, 2, 3, 4], LOGPROBS, top_n=0)
