"""The engine protocol shared by every runtime, and the per-sequence bookkeeping they share.

An engine turns a batch of tokenised prompts into generations. Everything that is the same for
every runtime - incremental detokenisation, stop sequences, eos and length limits, cancellation,
the per-token callback used for streaming - lives in `SequenceTracker`, so engines only map
their runtime's step results onto `SequenceTracker.push`.
"""

from __future__ import annotations

import enum
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from app.core.engine_kinds import EngineKind
from app.core.errors import LaminiError, ModelSourceError
from app.core.families import Family
from app.engines.grammar import TokenConstraint
from app.engines.scoring import TokenScore, score_tokens


class FinishReason(str, enum.Enum):
    """Why a sequence stopped (TGI's names, plus our own for cancellation)."""

    LENGTH = "length"
    EOS = "eos_token"
    STOP_SEQUENCE = "stop_sequence"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class SamplingParams:
    """Decoding settings that must be equal for every sequence of one engine batch."""

    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int | None = None
    min_new_tokens: int = 0


@dataclass(frozen=True)
class GeneratedToken:
    """One generated token as TGI reports it."""

    id: int
    text: str
    logprob: float
    special: bool

    @property
    def finite_logprob(self) -> float | None:
        """The log probability, or None where the engine could not score the token (NaN):
        JSON has no NaN, and APIs report an unknown logprob as null."""
        return self.logprob if math.isfinite(self.logprob) else None


# Called with each generated token and whether it is the sequence's last one.
TokenCallback = Callable[[GeneratedToken, bool], None]
FinishCallback = Callable[["Generation"], None]


@dataclass
class EngineRequest:
    """One sequence of a batch: its prompt and its own limits.

    `on_token` is called from the engine's thread for every generated token (streaming);
    `on_finish` is called from that thread as soon as this sequence is finished - before the
    rest of its batch - so its answer need not wait for longer neighbours; `is_cancelled` is
    polled every step so a disconnected client stops costing compute. `constraint` (engines
    with `supports_constraints` only) masks the tokens a response grammar does not allow.
    """

    prompt_ids: list[int]
    max_new_tokens: int
    stop: tuple[str, ...] = ()
    constraint: TokenConstraint | None = None
    on_token: TokenCallback | None = None
    on_finish: FinishCallback | None = None
    is_cancelled: Callable[[], bool] = lambda: False


@dataclass
class Generation:
    """The result for one sequence: its tokens, raw text and why it ended.

    `text` is the decoded text of the generated tokens without special tokens, ending with the
    stop sequence when one matched (as TGI returns it); tidying is the service's job.
    """

    prompt_ids: list[int]
    tokens: list[GeneratedToken]
    text: str
    finish_reason: FinishReason
    stop_sequence: str | None = None

    @property
    def token_ids(self) -> list[int]:
        return [token.id for token in self.tokens]


@dataclass
class SequenceTracker:
    """Follows one sequence while it is generated; decides when it is finished.

    Detokenisation is incremental in the way TGI does it: text is emitted only once the bytes
    decode cleanly, so multi-byte characters split over tokens are never sent half-way.
    """

    request: EngineRequest
    tokenizer: Any
    eos_token_ids: frozenset[int]
    special_ids: frozenset[int] = frozenset()  # eos and every other special token
    tokens: list[GeneratedToken] = field(default_factory=list)
    text: str = ""
    finish_reason: FinishReason | None = None
    stop_sequence: str | None = None
    _ids: list[int] = field(default_factory=list)
    _prefix_offset: int = 0
    _read_offset: int = 0
    _limit: int | None = None

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    @property
    def max_new_tokens(self) -> int:
        """The request's own limit, or less where the engine has less room for this batch."""
        wanted = self.request.max_new_tokens
        return wanted if self._limit is None else min(wanted, self._limit)

    def cap(self, room: int) -> None:
        """The engine can generate at most `room` tokens for this sequence in its batch (the
        context is shared with longer prompts); knowing it here makes every last token known
        as last when it is pushed."""
        self._limit = max(1, room)

    def _next_text(self) -> str:
        """Text added by the newest token (empty while a character is incomplete)."""
        decode = self.tokenizer.decode
        before = decode(
            self._ids[self._prefix_offset : self._read_offset], skip_special_tokens=True
        )
        after = decode(self._ids[self._prefix_offset :], skip_special_tokens=True)
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self._prefix_offset = self._read_offset
            self._read_offset = len(self._ids)
            return after[len(before) :]
        return ""

    def push(self, token_id: int, logprob: float = math.nan) -> bool:
        """Record a generated token; return True when the sequence is finished."""
        if self.done:
            return True
        if self.request.is_cancelled():
            self.finish_reason = FinishReason.CANCELLED
            return True
        if self.request.constraint is not None:
            self.request.constraint.advance(token_id)
        is_eos = token_id in self.eos_token_ids
        special = is_eos or token_id in self.special_ids
        self._ids.append(token_id)
        piece = "" if special else self._next_text()
        token = GeneratedToken(
            id=token_id,
            text=self.tokenizer.decode([token_id], skip_special_tokens=False) if special else piece,
            logprob=float(logprob),
            special=special,
        )
        self.tokens.append(token)
        self.text += piece
        if is_eos:
            self.finish_reason = FinishReason.EOS
        elif (stop := self._matched_stop(piece)) is not None:
            self.finish_reason = FinishReason.STOP_SEQUENCE
            self.stop_sequence = stop
        elif len(self.tokens) >= self.max_new_tokens:
            self.finish_reason = FinishReason.LENGTH
        if self.request.on_token is not None:
            self.request.on_token(token, self.done)
        if self.done and self.request.on_finish is not None:
            self.request.on_finish(self.finish())
        return self.done

    def _matched_stop(self, piece: str) -> str | None:
        """The first stop sequence that the newest text completes, if any.

        The text is cut right after the stop sequence: a token may carry text beyond it.
        """
        if not piece:
            return None
        for stop in self.request.stop:
            window_start = max(0, len(self.text) - len(piece) - len(stop) + 1)
            found = self.text.find(stop, window_start)
            if found != -1:
                self.text = self.text[: found + len(stop)]
                return stop
        return None

    def finish(self) -> Generation:
        """The generation as it stands; a sequence the engine ended without a reason hit length."""
        if self.finish_reason is None:
            self.finish_reason = FinishReason.LENGTH
        return Generation(
            prompt_ids=list(self.request.prompt_ids),
            tokens=list(self.tokens),
            text=self.text,
            finish_reason=self.finish_reason,
            stop_sequence=self.stop_sequence,
        )


def cut_longest_first(trackers: list[SequenceTracker], count: int) -> list[list[SequenceTracker]]:
    """`trackers` sorted by prompt length, longest first, cut into `count` equal groups (the
    last may be smaller). Similar lengths share a group, which spares padding; the longest group
    goes first so that it never runs alone at the end."""
    ordered = sorted(trackers, key=lambda t: len(t.request.prompt_ids), reverse=True)
    size = max(1, math.ceil(len(ordered) / max(count, 1)))
    return [ordered[start : start + size] for start in range(0, len(ordered), size)]


@dataclass(frozen=True)
class EngineInfo:
    """What `/info` and the logs say about a loaded engine."""

    kind: EngineKind
    device: str
    quantization: str
    max_input_tokens: int
    max_total_tokens: int
    vocab_size: int | None = None


class PromptScoringError(LaminiError):
    """This model or engine cannot score a prompt (encoder-decoder models never can)."""


def encode_prompt(tokenizer: Any, family: Family, text: str) -> list[int]:
    """Token ids for already formatted text.

    A format that writes its bos token as text (OPT's `</s>`) must not get a second one from
    the tokenizer; every other format keeps the tokenizer's own special tokens (T5's `</s>`).
    """
    add_special = not family.prompt_format.bos_text
    # verbose=False: an over-long prompt is the caller's to refuse, not a log warning.
    return list(tokenizer(text, add_special_tokens=add_special, verbose=False)["input_ids"])


# Tokenizers without a real limit report a huge sentinel `model_max_length`; anything above this
# is treated as "not set".
_UNSET_TOKENIZER_LIMIT = 1_000_000
# T5 was trained on 512 input tokens (relative positions, no hard limit) and the LaMini and
# flant5-dolly cards generate at most 512 new tokens.
_SEQ2SEQ_MAX_INPUT_TOKENS = 512
_SEQ2SEQ_MAX_NEW_TOKENS = 512


def limits_from_config(config: Any, tokenizer: Any, family: Family) -> tuple[int, int]:
    """`(max_input_tokens, max_total_tokens)` of a checkpoint, for every engine alike.

    Decoder-only models are bounded by their position table: the prompt plus the generated
    tokens must fit, and at least one token must be generated. Encoder-decoder models are
    bounded by what they were trained on: the input limit and the new-token limit add up.
    """
    if family.is_seq2seq:
        limit = getattr(tokenizer, "model_max_length", None)
        max_input = (
            int(limit)
            if isinstance(limit, int) and 0 < limit < _UNSET_TOKENIZER_LIMIT
            else _SEQ2SEQ_MAX_INPUT_TOKENS
        )
        return max_input, max_input + _SEQ2SEQ_MAX_NEW_TOKENS
    positions = getattr(config, "n_positions", None) or getattr(
        config, "max_position_embeddings", None
    )
    if not positions:
        raise ModelSourceError(
            f"the {family.name} checkpoint config has neither n_positions nor "
            "max_position_embeddings, so its context length is unknown"
        )
    return int(positions) - 1, int(positions)


def vocab_size_from_config(config: Any) -> int | None:
    """The model's output vocabulary (the logits' width), which may exceed the tokenizer's."""
    size = getattr(config, "vocab_size", None)
    return int(size) if isinstance(size, int) and size > 0 else None


class Engine(ABC):
    """A loaded model that generates for batches of tokenised prompts.

    Engines are not thread-safe: the batcher owns one and calls it from one worker thread.
    """

    family: Family
    tokenizer: Any
    info: EngineInfo
    # Whether `EngineRequest.constraint` is honoured (the engine exposes each step's logits).
    supports_constraints: bool = False

    @property
    def eos_token_ids(self) -> frozenset[int]:
        ids = {self.tokenizer.eos_token_id} if self.tokenizer.eos_token_id is not None else set()
        return frozenset(ids)

    @cached_property
    def special_token_ids(self) -> frozenset[int]:
        """The tokenizer's special tokens (eos included), read once: transformers rebuilds
        `all_special_ids` on every access, converting each special token to its id - T5 has
        103. Asked per generated token, it made a full Flan-T5-248M twin's int8 decode step
        (continuous engine, 2-core AVX2 EPYC, medians of three alternated runs) 39.2 ms at 12
        rows and 76.0 ms at 32, against 36.0 and 65.4 ms read once."""
        return self.eos_token_ids | frozenset(getattr(self.tokenizer, "all_special_ids", ()))

    def track(self, request: EngineRequest) -> SequenceTracker:
        """A tracker for `request`'s sequence, with this engine's tokenizer and special tokens."""
        return SequenceTracker(request, self.tokenizer, self.eos_token_ids, self.special_token_ids)

    def encode(self, text: str) -> list[int]:
        """Token ids for already formatted text (the format decides special tokens)."""
        return encode_prompt(self.tokenizer, self.family, text)

    def generate(
        self, requests: Sequence[EngineRequest], sampling: SamplingParams
    ) -> list[Generation]:
        """Generate for every request in one batch; results are in request order."""
        if not requests:
            return []
        trackers = [self.track(request) for request in requests]
        self._generate(trackers, sampling)
        return [tracker.finish() for tracker in trackers]

    @abstractmethod
    def _generate(self, trackers: list[SequenceTracker], sampling: SamplingParams) -> None:
        """Run the runtime, pushing every new token of sequence i into trackers[i].

        Must stop feeding (and, where the runtime allows, stop computing) a sequence once its
        tracker reports done.
        """

    def score(self, ids: Sequence[int], top_n: int = 0) -> list[TokenScore]:
        """Each token of `ids` with its log-probability given the tokens before it and the
        `top_n` likeliest alternatives (see `app.engines.scoring`).

        A pure forward pass: it shares no state with a running generation, so it may run on
        any thread (the runtimes here are safe for concurrent reads).
        """
        self.check_scoring()
        if len(ids) < 2:
            return score_tokens(ids, np.zeros((0, 0), dtype=np.float32), top_n)
        return score_tokens(ids, self.next_token_logprobs(list(ids[:-1])), top_n)

    def check_scoring(self) -> None:
        """Raise `PromptScoringError` when this model cannot score a prompt."""
        if self.family.is_seq2seq:
            raise PromptScoringError(
                f"{self.family.name} is an encoder-decoder model: it reads the prompt with its "
                "encoder and never predicts the prompt's tokens, so a prompt has no "
                "log-probabilities and cannot be echoed and continued; `echo` and logprobs "
                "alternatives need a decoder-only model (LaMini-GPT, -Cerebras, -Neo, OPT-IML)"
            )

    def next_token_logprobs(self, ids: list[int]) -> np.ndarray:
        """`[len(ids), vocab]` float32: row t is the log-softmax distribution of the token
        after `ids[: t + 1]`. Engines that can score implement it."""
        raise PromptScoringError(f"the {self.info.kind.value} engine cannot score prompts")

    def close(self) -> None:  # noqa: B027 - optional hook, most runtimes free on GC
        """Release runtime resources (threads, sessions)."""
