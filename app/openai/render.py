"""Generated choices to OpenAI's response objects: completions and chat, whole or in chunks.

The routes run choices the same way for both APIs; only the objects differ. A renderer turns a
`ChoiceResult` (a choice's new text, its tokens and maybe its finish reason) into the API's
choice object and wraps choices into a response or a stream chunk.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel

from app.engines.base import FinishReason, GeneratedToken
from app.engines.scoring import TokenScore
from app.openai.schemas import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatDelta,
    ChoiceLogprobs,
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    OpenAIFinishReason,
    TokenLogprob,
    TopLogprob,
    Usage,
)

OPENAI_FINISH_REASONS: dict[FinishReason, OpenAIFinishReason] = {
    FinishReason.EOS: "stop",
    FinishReason.STOP_SEQUENCE: "stop",
    FinishReason.LENGTH: "length",
    FinishReason.CANCELLED: "stop",
}


Alternatives = tuple[tuple[int, float], ...]


@dataclass(frozen=True)
class Echo:
    """The prompt as `echo` returns it: its text and each of its tokens scored."""

    text: str
    scores: list[TokenScore]


@dataclass(frozen=True)
class ChoiceResult:
    """A choice's text (all of it, or a stream's next delta), its tokens and finish reason.

    `text_start` is how many characters of the tokens' joined text come before `text` (the
    family's tidying strips leading spaces), so text offsets point into `text`; `alternatives`
    holds each token's likeliest alternatives when asked for; `echo` the scored prompt.
    """

    index: int
    text: str
    tokens: list[GeneratedToken]
    finish_reason: OpenAIFinishReason | None = None
    text_start: int = 0
    alternatives: Sequence[Alternatives] | None = None
    echo: Echo | None = None


def _token_text(token_id: int) -> str:
    return str(token_id)


@dataclass
class Renderer(ABC):
    """What every object of one response shares, and how the API's objects are built."""

    id_prefix: ClassVar[str]

    id: str
    model: str
    system_fingerprint: str
    with_logprobs: bool
    created: int = field(default_factory=lambda: int(time.time()))
    # How a token id is shown in logprobs (the model's tokenizer decodes it).
    token_text: Callable[[int], str] = _token_text

    @property
    def envelope(self) -> dict[str, Any]:
        """The fields every response and chunk of this request repeats."""
        return {
            "id": self.id,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": self.system_fingerprint,
        }

    @abstractmethod
    def response(self, choices: list[ChoiceResult], usage: Usage) -> BaseModel:
        """The whole (non-streamed) response."""

    @abstractmethod
    def chunk(self, choice: ChoiceResult, usage: Usage | None = None) -> BaseModel:
        """A stream chunk carrying one choice's delta (and the usage so far, when asked)."""

    @abstractmethod
    def usage_chunk(self, usage: Usage) -> BaseModel:
        """The last chunk when `stream_options.include_usage`: no choices, only usage."""

    def opening_chunks(self, indexes: list[int]) -> list[BaseModel]:
        """Chunks sent before any token (chat announces the assistant role)."""
        return []


class CompletionRenderer(Renderer):
    """`text_completion` objects; streamed chunks have the same shape as the response."""

    id_prefix = "cmpl"

    def _choice(self, choice: ChoiceResult) -> CompletionChoice:
        echoed = "" if choice.echo is None else choice.echo.text
        return CompletionChoice(
            index=choice.index,
            text=echoed + choice.text,
            logprobs=self._logprobs(choice) if self.with_logprobs else None,
            finish_reason=choice.finish_reason,
        )

    def _top(self, chosen: tuple[int, float | None], alternatives: Alternatives) -> dict:
        """OpenAI's `top_logprobs` entry: the alternatives, and the chosen token (as vLLM)."""
        top = {self.token_text(token_id): logprob for token_id, logprob in alternatives}
        token_id, logprob = chosen
        if logprob is not None:  # its own entry wins over another id with the same text
            top[self.token_text(token_id)] = logprob
        return top

    def _logprobs(self, choice: ChoiceResult) -> CompletionLogprobs:
        """Parallel lists over the echoed prompt's tokens, then the generated ones; offsets
        point into the choice's `text` (generated tokens cut by tidying get the offset where
        the text starts)."""
        texts: list[str] = []
        logprobs: list[float | None] = []
        tops: list[dict[str, float] | None] = []
        offsets: list[int] = []
        base = 0
        if choice.echo is not None:
            for score in choice.echo.scores:
                offsets.append(base)
                texts.append(self.token_text(score.id))
                base += len(texts[-1])
                logprobs.append(score.logprob)
                tops.append(
                    None
                    if score.logprob is None
                    else self._top((score.id, score.logprob), score.top)
                )
            base = len(choice.echo.text)
        position = 0
        for number, token in enumerate(choice.tokens):
            offsets.append(base + max(0, position - choice.text_start))
            position += len(token.text)
            texts.append(token.text)
            logprobs.append(token.finite_logprob)
            if choice.alternatives is not None:
                chosen = (token.id, token.finite_logprob)
                tops.append(self._top(chosen, choice.alternatives[number]))
        return CompletionLogprobs(
            tokens=texts,
            token_logprobs=logprobs,
            top_logprobs=tops if tops else None,
            text_offset=offsets,
        )

    def _completion(self, choices: list[CompletionChoice], usage: Usage | None) -> Completion:
        return Completion(
            **self.envelope,
            choices=choices,
            usage=usage,
        )

    def response(self, choices: list[ChoiceResult], usage: Usage) -> Completion:
        return self._completion([self._choice(choice) for choice in choices], usage)

    def chunk(self, choice: ChoiceResult, usage: Usage | None = None) -> Completion:
        return self._completion([self._choice(choice)], usage)

    def usage_chunk(self, usage: Usage) -> Completion:
        return self._completion([], usage)


class ChatRenderer(Renderer):
    """`chat.completion` responses and `chat.completion.chunk` stream chunks."""

    id_prefix = "chatcmpl"

    def _logprobs(self, choice: ChoiceResult) -> ChoiceLogprobs | None:
        if not self.with_logprobs:
            return None
        content = []
        for number, token in enumerate(choice.tokens):
            alternatives = () if choice.alternatives is None else choice.alternatives[number]
            top = []
            for token_id, logprob in alternatives:
                text = self.token_text(token_id)
                top.append(TopLogprob(token=text, logprob=logprob, bytes=list(text.encode())))
            content.append(
                TokenLogprob(
                    token=token.text,
                    logprob=token.finite_logprob,
                    bytes=list(token.text.encode("utf-8")),
                    top_logprobs=top,
                )
            )
        return ChoiceLogprobs(content=content)

    def _chunk(self, choices: list[ChatChunkChoice], usage: Usage | None) -> ChatCompletionChunk:
        return ChatCompletionChunk(
            **self.envelope,
            choices=choices,
            usage=usage,
        )

    def response(self, choices: list[ChoiceResult], usage: Usage) -> ChatCompletion:
        return ChatCompletion(
            **self.envelope,
            choices=[
                ChatChoice(
                    index=choice.index,
                    message=AssistantMessage(content=choice.text),
                    logprobs=self._logprobs(choice),
                    finish_reason=choice.finish_reason or "stop",
                )
                for choice in choices
            ],
            usage=usage,
        )

    def chunk(self, choice: ChoiceResult, usage: Usage | None = None) -> ChatCompletionChunk:
        delta = ChatDelta(content=choice.text or None)
        return self._chunk(
            [
                ChatChunkChoice(
                    index=choice.index,
                    delta=delta,
                    logprobs=self._logprobs(choice),
                    finish_reason=choice.finish_reason,
                )
            ],
            usage,
        )

    def usage_chunk(self, usage: Usage) -> ChatCompletionChunk:
        return self._chunk([], usage)

    def opening_chunks(self, indexes: list[int]) -> list[BaseModel]:
        return [
            self._chunk(
                [ChatChunkChoice(index=index, delta=ChatDelta(role="assistant", content=""))],
                None,
            )
            for index in indexes
        ]
