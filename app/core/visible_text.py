"""The answer text OpenAI clients see, built token by token.

OpenAI's API returns the text *before* a stop sequence, and a stream's deltas must add up to
exactly the text a non-streamed request returns. Engines, however, report raw token pieces
(the stop sequence included, sometimes with text after it) and the family's tidy rule (cut at
a hallucinated next turn, undo the newline hack, strip) only makes sense on a finished text.
`VisibleText` reconciles both: it cuts the raw text at the first stop sequence, tidies it, and
while the text is still growing it holds back any tail that could still turn into a stop
sequence or a newline-hack marker, so nothing is ever sent that would later have to be taken
back.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from app.core.prompts import NEWLINE_HACK_OUT, PromptFormat


def _partial_tail(text: str, patterns: tuple[str, ...]) -> int:
    """Length of the longest end of `text` that is a proper prefix of one of `patterns`.

    Only the positions where a pattern's first character occurs are tried, so the cost per
    token stays small however long the stop sequences are.
    """
    longest = 0
    for pattern in patterns:
        tail = text[max(0, len(text) - len(pattern) + 1) :]
        start = tail.find(pattern[0]) if tail else -1
        while start != -1 and len(tail) - start > longest:
            if pattern.startswith(tail[start:]):
                longest = len(tail) - start
                break
            start = tail.find(pattern[0], start + 1)
    return longest


@dataclass
class VisibleText:
    """Raw generated pieces in, the user-visible answer (or its next delta) out."""

    prompt_format: PromptFormat
    stop: tuple[str, ...]
    raw: str = ""
    sent: str = ""
    _watched: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        markers = (
            tuple(old for old, _ in NEWLINE_HACK_OUT) if self.prompt_format.newline_hack else ()
        )
        self._watched = self.stop + markers

    def _before_stop(self) -> str | None:
        """The raw text before the earliest stop sequence, or None when none occurred."""
        found = [index for s in self.stop if (index := self.raw.find(s)) != -1]
        return self.raw[: min(found)] if found else None

    @property
    def text(self) -> str:
        """The whole answer so far, as a finished answer would read."""
        before_stop = self._before_stop()
        return self.prompt_format.tidy(self.raw if before_stop is None else before_stop)

    def push(self, piece: str) -> str:
        """Add a raw piece; return the text that is now safe to send (possibly empty)."""
        self.raw += piece
        before_stop = self._before_stop()
        if before_stop is None:
            settled = self.raw[: len(self.raw) - _partial_tail(self.raw, self._watched)]
            return self._advance(self.prompt_format.tidy(settled))
        return self._advance(self.prompt_format.tidy(before_stop))

    def finish(self) -> str:
        """The rest of the answer, once generation has ended."""
        return self._advance(self.text)

    def _advance(self, visible: str) -> str:
        """The part of `visible` not sent yet; nothing if it does not extend what was sent."""
        if len(visible) <= len(self.sent) or not visible.startswith(self.sent):
            return ""
        delta = visible[len(self.sent) :]
        self.sent = visible
        return delta
