"""Prompts' keys and values kept after their prefill, so that a prompt starting the same way
computes only the rest (automatic prefix caching, as vLLM's).

Why: a decoder-only prefill is compute-bound and is most of a request's time to first token
(full GPT-124M twin, int8, 2-core AMD EPYC: ~0.45 ms per prompt token, 132 ms for 300 tokens
alone), and prompts share their leading tokens: every LaMini-GPT prompt opens with the same
Alpaca preamble, a chat repeats its history, a client retries. Copying cached columns back costs
a memory copy (GPT-124M: ~37 KB per token as the int8 engine stores it, bfloat16; ~74 KB in
float32).

An entry is one whole prompt's cache, one tensor `[layers, 2 (keys, values), heads, tokens,
head_dim]`, found by the chained hashes of the prompt's leading blocks of `BLOCK_TOKENS`:
a new prompt's match is the entry owning its longest run of leading blocks, extended token by
token within that entry (which also rules out hash collisions). Entries are kept most recently
used last within a byte budget (`prefix_cache_mb`); the least recently used go first.

The keys and values of a prompt's tokens depend only on the tokens before them (causal
attention, positions counted from the first real token), not on the batch or its padding, so a
cached prefix is what the prefill would have computed; in float32 the tokens are the same.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

BLOCK_TOKENS = 16


@dataclass(frozen=True)
class PrefixHit:
    """The leading `tokens` of a prompt whose keys and values are cached in `states`."""

    tokens: int
    states: torch.Tensor  # [layers, 2, heads, >= tokens, head_dim]


@dataclass
class _Entry:
    prompt: tuple[int, ...]
    states: torch.Tensor
    blocks: list[int]  # the chained hashes of its full leading blocks


class PrefixCache:
    """Whole prompts' KV states, looked up by their leading blocks; LRU within a byte budget."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self.bytes = 0
        self._entries: OrderedDict[tuple[int, ...], _Entry] = OrderedDict()
        self._owners: dict[int, _Entry] = {}  # block hash -> the entry that last had it

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, prompt: Sequence[int]) -> PrefixHit | None:
        """The longest cached start of `prompt`, at most all but its last token (whose logits
        the prefill still has to compute); None below one block. The entry it comes from
        becomes the most recently used."""
        found = self._find(prompt)
        if found is None:
            return None
        entry, tokens = found
        self._touch(entry)
        return PrefixHit(tokens, entry.states)

    def peek(self, prompt: Sequence[int]) -> int:
        """How many tokens `lookup` would find, without using the entry (the scheduler weighs
        every waiting prompt each turn)."""
        found = self._find(prompt)
        return 0 if found is None else found[1]

    def _find(self, prompt: Sequence[int]) -> tuple[_Entry, int] | None:
        owner, blocks = None, 0
        for count, block in enumerate(_block_hashes(prompt), start=1):
            found = self._owners.get(block)
            if found is None:
                break
            owner, blocks = found, count
        if owner is None:
            return None
        tokens = _common_length(owner.prompt, prompt, blocks * BLOCK_TOKENS)
        tokens = min(tokens, len(prompt) - 1)
        return None if tokens < BLOCK_TOKENS else (owner, tokens)

    def store(self, prompt: Sequence[int], states: torch.Tensor) -> None:
        """Keep `prompt`'s `states` (all its tokens'), evicting the least recently used."""
        key = tuple(prompt)
        if key in self._entries:
            self._touch(self._entries[key])
            return
        size = states.nbytes
        if size > self.budget_bytes or len(key) < BLOCK_TOKENS:
            return
        while self.bytes + size > self.budget_bytes:
            self._evict(next(iter(self._entries.values())))
        entry = _Entry(key, states, list(_block_hashes(key)))
        self._entries[key] = entry
        self.bytes += size
        self._touch(entry)

    def _touch(self, entry: _Entry) -> None:
        """`entry` becomes the most recently used, and owns its blocks (so evicting an older
        entry that shares them does not hide them)."""
        self._entries.move_to_end(entry.prompt)
        for block in entry.blocks:
            self._owners[block] = entry

    def _evict(self, entry: _Entry) -> None:
        del self._entries[entry.prompt]
        self.bytes -= entry.states.nbytes
        for block in entry.blocks:
            if self._owners.get(block) is entry:
                del self._owners[block]


def _block_hashes(prompt: Sequence[int]) -> Iterator[int]:
    """One hash per full leading block, each covering every token before it too."""
    chained = 0
    for end in range(BLOCK_TOKENS, len(prompt) + 1, BLOCK_TOKENS):
        chained = hash((chained, tuple(prompt[end - BLOCK_TOKENS : end])))
        yield chained


def _common_length(cached: Sequence[int], prompt: Sequence[int], likely: int) -> int:
    """The length of the two sequences' common start, `likely` tokens of it probably equal
    (the blocks whose hashes matched: one comparison checks them, a collision falls back)."""
    if tuple(cached[:likely]) != tuple(prompt[:likely]):
        likely = 0
    length, end = likely, min(len(cached), len(prompt))
    while length < end and cached[length] == prompt[length]:
        length += 1
    return length
