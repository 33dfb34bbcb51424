"""VisibleText: streamed deltas add up to the finished answer, stop sequences never leak."""

from __future__ import annotations

import pytest

from app.core.prompts import ALPACA, NEWLINE_HACK, RAW, PromptFormat
from app.core.visible_text import VisibleText


def stream(prompt_format: PromptFormat, stop: tuple[str, ...], pieces: list[str]) -> list[str]:
    """Every delta, the last one from `finish`, checked against the whole answer."""
    text = VisibleText(prompt_format, stop)
    deltas = [text.push(piece) for piece in pieces]
    deltas.append(text.finish())
    assert "".join(deltas) == text.text
    return deltas


def test_text_before_a_stop_sequence_split_over_tokens() -> None:
    deltas = stream(RAW, ("END",), [" Hello", " wor", "ld E", "N", "D and more"])
    assert deltas == ["Hello", " wor", "ld", "", "", ""]


def test_a_held_back_prefix_is_released_when_it_is_not_a_stop() -> None:
    deltas = stream(RAW, ("END",), ["It is E", "NORMOUS"])
    assert deltas == ["It is", " ENORMOUS", ""]


def test_earliest_stop_sequence_wins() -> None:
    text = VisibleText(RAW, ("b", "a"))
    text.push("xxa yyb")
    assert text.text == "xx"


def test_alpaca_next_turn_is_cut_even_mid_stream() -> None:
    deltas = stream(ALPACA, ALPACA.stop_sequences, [" Paris.", "\n\n#", "## Inst", "ruction: x"])
    assert "".join(deltas) == "Paris."


def test_newline_hack_markers_are_decoded_not_sent_half_way() -> None:
    deltas = stream(NEWLINE_HACK, (), ["line one", " _LB", "_> line two"])
    assert deltas == ["line one", "", "\nline two", ""]


@pytest.mark.parametrize("pieces", [["  lead", "ing "], ["\n", "x", "  "]])
def test_surrounding_whitespace_is_stripped_like_the_whole_answer(pieces: list[str]) -> None:
    deltas = stream(RAW, (), pieces)
    assert "".join(deltas) == "".join(pieces).strip()


def test_a_long_stop_sequence_holds_back_only_a_matching_tail() -> None:
    long_stop = "<" + "x" * 5000 + ">"
    deltas = stream(RAW, (long_stop,), ["answer <xx", "x", "y"])
    assert deltas == ["answer", "", " <xxxy", ""]
