"""The prefix cache alone: what a prompt finds, and what the byte budget keeps."""

from __future__ import annotations

import torch

from app.engines.stepwise.prefix_cache import BLOCK_TOKENS, PrefixCache

LAYERS, HEADS, HEAD_DIM = 2, 2, 4
BYTES_PER_TOKEN = LAYERS * 2 * HEADS * HEAD_DIM * 4


def _states(tokens: int, fill: float = 1.0) -> torch.Tensor:
    return torch.full((LAYERS, 2, HEADS, tokens, HEAD_DIM), fill)


def _prompt(start: int, length: int) -> list[int]:
    return list(range(start, start + length))


def test_a_prompt_finds_the_longest_cached_start_token_by_token() -> None:
    cache = PrefixCache(budget_bytes=10**6)
    cached = _prompt(0, 40)
    cache.store(cached, _states(40))

    hit = cache.lookup([*cached[:37], 999, 1000])

    assert hit is not None
    assert hit.tokens == 37
    assert hit.states.shape[3] == 40


def test_a_repeated_prompt_leaves_its_last_token_to_compute() -> None:
    cache = PrefixCache(budget_bytes=10**6)
    prompt = _prompt(0, 33)
    cache.store(prompt, _states(33))

    hit = cache.lookup(prompt)

    assert hit is not None
    assert hit.tokens == 32


def test_no_hit_below_one_shared_block() -> None:
    cache = PrefixCache(budget_bytes=10**6)
    cache.store(_prompt(0, 40), _states(40))

    assert cache.lookup([*_prompt(0, BLOCK_TOKENS - 1), 999, *_prompt(100, 30)]) is None
    assert cache.lookup(_prompt(1, 40)) is None
    assert cache.lookup(_prompt(0, BLOCK_TOKENS)) is None  # all but its last: under a block


def test_the_deepest_entry_wins_among_entries_sharing_a_start() -> None:
    cache = PrefixCache(budget_bytes=10**6)
    shared = _prompt(0, 32)
    cache.store([*shared, *_prompt(500, 40)], _states(72, fill=1.0))
    cache.store([*shared, *_prompt(900, 40)], _states(72, fill=2.0))

    hit = cache.lookup([*shared, *_prompt(500, 40), 7])

    assert hit is not None
    assert hit.tokens == 72
    assert float(hit.states[0, 0, 0, 0, 0]) == 1.0


def test_the_least_recently_used_entries_leave_first_within_the_budget() -> None:
    cache = PrefixCache(budget_bytes=3 * 32 * BYTES_PER_TOKEN)
    prompts = [_prompt(1000 * i, 32) for i in range(4)]
    for prompt in prompts[:3]:
        cache.store(prompt, _states(32))
    assert cache.lookup(prompts[0]) is not None  # now the most recently used

    cache.store(prompts[3], _states(32))

    assert len(cache) == 3
    assert cache.bytes == 3 * 32 * BYTES_PER_TOKEN
    assert cache.lookup(prompts[1]) is None
    assert all(cache.lookup(prompts[i]) is not None for i in (0, 2, 3))


def test_a_shared_start_stays_findable_when_the_entry_that_last_had_it_leaves() -> None:
    cache = PrefixCache(budget_bytes=2 * 48 * BYTES_PER_TOKEN)
    shared = _prompt(0, 32)
    older, newer = [*shared, *_prompt(500, 16)], [*shared, *_prompt(900, 16)]
    cache.store(older, _states(48))
    cache.store(newer, _states(48))
    cache.lookup(older)  # `older` is used again: `newer` is now the least recently used

    cache.store(_prompt(5000, 48), _states(48))

    for prompt in ([*shared, 1, 2, 3], newer):  # `newer`'s own block has left with it
        hit = cache.lookup(prompt)
        assert hit is not None
        assert hit.tokens == 32


def test_what_cannot_fit_is_not_kept() -> None:
    cache = PrefixCache(budget_bytes=32 * BYTES_PER_TOKEN)
    cache.store(_prompt(0, 32), _states(32))

    cache.store(_prompt(100, 33), _states(33))
    cache.store(_prompt(200, BLOCK_TOKENS - 1), _states(BLOCK_TOKENS - 1))

    assert len(cache) == 1
    assert cache.lookup(_prompt(0, 32)) is not None


def test_peek_says_what_lookup_would_find_without_using_the_entry() -> None:
    cache = PrefixCache(budget_bytes=2 * 32 * BYTES_PER_TOKEN)
    first, second = _prompt(0, 32), _prompt(1000, 32)
    cache.store(first, _states(32))
    cache.store(second, _states(32))

    assert cache.peek([*first, 5]) == 32
    cache.store(_prompt(2000, 32), _states(32))  # evicts `first`: peeking did not use it

    assert cache.peek([*first, 5]) == 0
    assert cache.peek(second) == 31


def test_colliding_block_hashes_find_only_the_tokens_really_shared(monkeypatch) -> None:
    def colliding(prompt):
        return iter(range(len(prompt) // BLOCK_TOKENS))  # every prompt's blocks hash alike

    monkeypatch.setattr("app.engines.stepwise.prefix_cache._block_hashes", colliding)
    cache = PrefixCache(budget_bytes=10**6)
    cache.store(_prompt(0, 48), _states(48))

    assert cache.lookup([*_prompt(0, 20), *_prompt(500, 28)]).tokens == 20
    assert cache.lookup(_prompt(7, 48)) is None
