"""Prompt formats and tidying, exactly as shared/MODELS.md specifies them, for every family."""

from __future__ import annotations

import pytest

from app.core.families import FAMILIES, get_family
from app.core.prompts import decode_newline_hack, encode_newline_hack

ALPACA_HEAD = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n"
)
ALPACA_TAIL = "\n\n### Response:"

INSTRUCTIONS = {
    "plain": "What is the capital of France?",
    "newlines": "List three fruits:\n1.\n2.\n3.",
    "tabs": "name\tage\nAnn\t31",
    "unicode": "Übersetze: «Ça va?» → 你好 🙂",
    "empty": "",
    "padded": "  spaced out  \n",
}

# The exact model input of every family for every instruction above.
EXPECTED_INPUT: dict[str, dict[str, str]] = {
    "raw": dict(INSTRUCTIONS),
    "alpaca": {key: ALPACA_HEAD + text + ALPACA_TAIL for key, text in INSTRUCTIONS.items()},
    "raw-with-bos": {key: "</s>" + text for key, text in INSTRUCTIONS.items()},
    "newline-hack": {
        "plain": "What is the capital of France?",
        "newlines": "List three fruits: <_LB_> 1. <_LB_> 2. <_LB_> 3.",
        "tabs": "name <_T_> age <_LB_> Ann <_T_> 31",
        "unicode": "Übersetze: «Ça va?» → 你好 🙂",
        "empty": "",
        "padded": "spaced out <_LB_>",
    },
}
FAMILY_FORMAT = {
    "lamini-t5": "raw",
    "lamini-flan-t5": "raw",
    "lamini-cerebras": "alpaca",
    "lamini-gpt": "alpaca",
    "lamini-neo": "alpaca",
    "opt-iml": "raw-with-bos",
    "flant5-dolly": "newline-hack",
}


def test_every_family_has_an_expected_format() -> None:
    assert set(FAMILY_FORMAT) == {family.name for family in FAMILIES}


@pytest.mark.parametrize("family_name", FAMILY_FORMAT)
@pytest.mark.parametrize("case", INSTRUCTIONS)
def test_wrap_gives_the_exact_model_input(family_name: str, case: str) -> None:
    prompt_format = get_family(family_name).prompt_format

    assert prompt_format.name == FAMILY_FORMAT[family_name]
    assert prompt_format.wrap(INSTRUCTIONS[case]) == EXPECTED_INPUT[prompt_format.name][case]


def test_alpaca_wrap_is_the_card_template_byte_for_byte() -> None:
    wrapped = get_family("lamini-gpt").prompt_format.wrap("Say hi")

    assert wrapped == (
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\nSay hi\n\n### Response:"
    )


def test_braces_in_an_instruction_are_kept_literally() -> None:
    assert get_family("lamini-neo").prompt_format.wrap("{instruction} {0}") == (
        ALPACA_HEAD + "{instruction} {0}" + ALPACA_TAIL
    )


@pytest.mark.parametrize("family_name", FAMILY_FORMAT)
def test_static_prefix_starts_every_prompt(family_name: str) -> None:
    prompt_format = get_family(family_name).prompt_format

    for text in INSTRUCTIONS.values():
        assert prompt_format.wrap(text).startswith(prompt_format.static_prefix)


def test_static_prefixes_per_format() -> None:
    assert get_family("lamini-gpt").prompt_format.static_prefix == ALPACA_HEAD
    assert get_family("opt-iml").prompt_format.static_prefix == "</s>"
    assert get_family("lamini-t5").prompt_format.static_prefix == ""


def test_only_alpaca_families_stop_at_the_next_instruction() -> None:
    stops = {family.name: family.prompt_format.stop_sequences for family in FAMILIES}

    assert stops == {
        name: ("### Instruction:",) if fmt == "alpaca" else ()
        for name, fmt in FAMILY_FORMAT.items()
    }


def test_newline_hack_input_is_the_card_expression() -> None:
    def card(text: str) -> str:
        return " ".join(text.replace("\n", " <_LB_> ").replace("\t", " <_T_> ").split())

    for text in [*INSTRUCTIONS.values(), "\n\n\t\t", "a\r\nb", "x \n \t y"]:
        assert encode_newline_hack(text) == card(text)


@pytest.mark.parametrize(
    ("generated", "expected"),
    [
        # what T5 decodes for "<_LB_>": the "<" piece is unknown and dropped
        ("Line one _LB_> Line two", "Line one\nLine two"),
        ("col _T_> col", "col\tcol"),
        ("a_LB_>b", "a\nb"),
        ("a_T_> b", "a\tb"),
        ("a_T_>b", "a\tb"),
        ("1. x _LB_> 2. y _LB_> _T_> z", "1. x\n2. y\n\tz"),
    ],
)
def test_newline_hack_output_replacements_in_card_order(generated: str, expected: str) -> None:
    assert decode_newline_hack(generated) == expected


@pytest.mark.parametrize(
    ("family_name", "generated", "expected"),
    [
        ("lamini-t5", "  Paris is the capital. \n", "Paris is the capital."),
        ("lamini-flan-t5", "\tParis\n", "Paris"),
        ("lamini-gpt", " Paris.\n\n### Instruction:\nName a city.", "Paris."),
        ("lamini-cerebras", "Paris ### Instruction: more", "Paris"),
        ("lamini-neo", "  Übersetzt: 你好 🙂  ", "Übersetzt: 你好 🙂"),
        ("opt-iml", " Paris\n### Instruction: stays", "Paris\n### Instruction: stays"),
        ("flant5-dolly", " Fruits: _LB_> 1. apple _LB_> 2. pear ", "Fruits:\n1. apple\n2. pear"),
        ("flant5-dolly", "", ""),
    ],
)
def test_tidy_per_family(family_name: str, generated: str, expected: str) -> None:
    assert get_family(family_name).prompt_format.tidy(generated) == expected


@pytest.mark.parametrize("family_name", ["lamini-gpt", "lamini-neo", "lamini-cerebras", "opt-iml"])
def test_tidy_removes_an_echoed_prompt(family_name: str) -> None:
    prompt_format = get_family(family_name).prompt_format
    model_input = prompt_format.wrap("Name a colour.")

    assert prompt_format.tidy(model_input + " Blue. ", model_input) == "Blue."


def test_tidy_removes_the_opt_prompt_echoed_without_its_bos() -> None:
    prompt_format = get_family("opt-iml").prompt_format
    model_input = prompt_format.wrap("Name a colour.")

    assert prompt_format.tidy("Name a colour. Blue.", model_input) == "Blue."


def test_tidy_keeps_text_that_only_resembles_the_prompt() -> None:
    prompt_format = get_family("lamini-gpt").prompt_format

    assert prompt_format.tidy("Name a colour: blue", "Name a colour.") == "Name a colour: blue"
