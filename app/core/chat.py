"""Chat messages to one instruction: how single-turn models answer a conversation.

LaMini, OPT-IML and flant5-dolly were trained on one instruction and one response; they have no
chat template. A conversation is therefore flattened into one instruction, deterministically,
and then wrapped in the family's prompt format like any other instruction:

1. System and developer messages, in order, form the first paragraph (one line each).
2. Earlier user and assistant turns form the second paragraph, one `User: ...` or
   `Assistant: ...` line per turn, in order.
3. The last message (always a user message) is the instruction itself, the last paragraph.

Texts are stripped, paragraphs are separated by a blank line and empty turns and paragraphs are
left out, so a conversation of one user message is exactly that message (stripped): chat and
completions agree on single instructions.
Families whose tokenizer has no newline (plain T5) see the paragraphs run together; flant5-dolly
keeps them through its newline hack.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

CONTEXT_ROLES = frozenset({"system", "developer"})
SPEAKER_LABELS = {"user": "User", "assistant": "Assistant"}


@dataclass(frozen=True)
class ChatTurn:
    """One message as the mapping sees it: who said it, and its text."""

    role: str
    text: str


def chat_to_instruction(turns: Sequence[ChatTurn]) -> str:
    """The one instruction a single-turn model is given for `turns` (see the module rule)."""
    if not turns or turns[-1].role != "user":
        raise ValueError("a conversation must end with a user message")
    *history, last = turns
    context = [turn.text.strip() for turn in history if turn.role in CONTEXT_ROLES]
    transcript = [
        f"{SPEAKER_LABELS[turn.role]}: {turn.text.strip()}"
        for turn in history
        if turn.role in SPEAKER_LABELS and turn.text.strip()
    ]
    paragraphs = ("\n".join(filter(None, context)), "\n".join(transcript), last.text.strip())
    return "\n\n".join(paragraph for paragraph in paragraphs if paragraph)
