"""Generated choices to OpenAI's response objects: completions and chat, whole or in chunks.

The routes run choices the same way for both APIs; only the objects differ. A renderer turns a
`ChoiceResult` (a choice's new text, its tokens and maybe its finish reason) into the API's
choice object and wraps choices into a response or a stream chunk.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel

from app.engines.base import FinishReason, GeneratedToken
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
    Usage,
)

OPENAI_FINISH_REASONS: dict[FinishReason, OpenAIFinishReason] = {
    FinishReason.EOS: "stop",
    FinishReason.STOP_SEQUENCE: "stop",
    FinishReason.LENGTH: "length",
    FinishReason.CANCELLED: "stop",
}


@dataclass(frozen=True)
class ChoiceResult:
    """A choice's text (all of it, or a stream's next delta), its tokens and finish reason."""

    index: int
    text: str
    tokens: list[GeneratedToken]
    finish_reason: OpenAIFinishReason | None = None


@dataclass
class Renderer(ABC):
    """What every object of one response shares, and how the API's objects are built."""

    id_prefix: ClassVar[str]

    id: str
    model: str
    system_fingerprint: str
    with_logprobs: bool
    created: int = field(default_factory=lambda: int(time.time()))

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
    def chunk(self, choice: ChoiceResult) -> BaseModel:
        """A stream chunk carrying one choice's delta."""

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
        return CompletionChoice(
            index=choice.index,
            text=choice.text,
            logprobs=self._logprobs(choice.tokens) if self.with_logprobs else None,
            finish_reason=choice.finish_reason,
        )

    @staticmethod
    def _logprobs(tokens: list[GeneratedToken]) -> CompletionLogprobs:
        offsets = []
        position = 0
        for token in tokens:
            offsets.append(position)
            position += len(token.text)
        return CompletionLogprobs(
            tokens=[token.text for token in tokens],
            token_logprobs=[token.finite_logprob for token in tokens],
            top_logprobs=None,
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

    def chunk(self, choice: ChoiceResult) -> Completion:
        return self._completion([self._choice(choice)], None)

    def usage_chunk(self, usage: Usage) -> Completion:
        return self._completion([], usage)


class ChatRenderer(Renderer):
    """`chat.completion` responses and `chat.completion.chunk` stream chunks."""

    id_prefix = "chatcmpl"

    def _logprobs(self, tokens: list[GeneratedToken]) -> ChoiceLogprobs | None:
        if not self.with_logprobs:
            return None
        return ChoiceLogprobs(
            content=[
                TokenLogprob(
                    token=token.text,
                    logprob=token.finite_logprob,
                    bytes=list(token.text.encode("utf-8")),
                )
                for token in tokens
            ]
        )

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
                    logprobs=self._logprobs(choice.tokens),
                    finish_reason=choice.finish_reason or "stop",
                )
                for choice in choices
            ],
            usage=usage,
        )

    def chunk(self, choice: ChoiceResult) -> ChatCompletionChunk:
        delta = ChatDelta(content=choice.text or None)
        return self._chunk(
            [
                ChatChunkChoice(
                    index=choice.index,
                    delta=delta,
                    logprobs=self._logprobs(choice.tokens),
                    finish_reason=choice.finish_reason,
                )
            ],
            None,
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
