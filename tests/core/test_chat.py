"""The chat -> instruction rule, and the exact model input it gives in every family."""

from __future__ import annotations

import pytest

from app.core.chat import ChatTurn, chat_to_instruction
from app.core.families import FAMILIES, get_family

CONVERSATION = [
    ChatTurn("system", "You are a concise assistant."),
    ChatTurn("user", "Name a fruit."),
    ChatTurn("assistant", "Apple."),
    ChatTurn("developer", "  Answer in one word.  "),
    ChatTurn("user", "Name\tanother one.\n"),
]
CONVERSATION_INSTRUCTION = (
    "You are a concise assistant.\nAnswer in one word.\n\n"
    "User: Name a fruit.\nAssistant: Apple.\n\n"
    "Name\tanother one."
)

ALPACA_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n" + CONVERSATION_INSTRUCTION + "\n\n"
    "### Response:"
)

# The exact text each family's tokenizer receives for CONVERSATION.
EXPECTED_MODEL_INPUT = {
    "lamini-t5": CONVERSATION_INSTRUCTION,
    "lamini-flan-t5": CONVERSATION_INSTRUCTION,
    "lamini-cerebras": ALPACA_INPUT,
    "lamini-gpt": ALPACA_INPUT,
    "lamini-neo": ALPACA_INPUT,
    "opt-iml": "</s>" + CONVERSATION_INSTRUCTION,
    "flant5-dolly": (
        "You are a concise assistant. <_LB_> Answer in one word. <_LB_> <_LB_> "
        "User: Name a fruit. <_LB_> Assistant: Apple. <_LB_> <_LB_> Name <_T_> another one."
    ),
}


def test_single_user_message_is_the_instruction_itself() -> None:
    assert chat_to_instruction([ChatTurn("user", " What is 2+2? ")]) == "What is 2+2?"


def test_system_text_comes_first_then_the_instruction() -> None:
    turns = [ChatTurn("system", "Be brief."), ChatTurn("user", "Define entropy.")]
    assert chat_to_instruction(turns) == "Be brief.\n\nDefine entropy."


def test_earlier_turns_become_a_labelled_transcript() -> None:
    turns = [
        ChatTurn("user", "Hi"),
        ChatTurn("assistant", "Hello!"),
        ChatTurn("user", "Tell me a joke."),
    ]
    assert chat_to_instruction(turns) == "User: Hi\nAssistant: Hello!\n\nTell me a joke."


def test_empty_turns_and_paragraphs_are_left_out() -> None:
    turns = [
        ChatTurn("system", "   "),
        ChatTurn("assistant", ""),
        ChatTurn("user", "Only this."),
    ]
    assert chat_to_instruction(turns) == "Only this."


def test_context_and_transcript_keep_their_order() -> None:
    assert chat_to_instruction(CONVERSATION) == CONVERSATION_INSTRUCTION


def test_the_mapping_is_deterministic() -> None:
    assert {chat_to_instruction(CONVERSATION) for _ in range(5)} == {CONVERSATION_INSTRUCTION}


@pytest.mark.parametrize("last_role", ["assistant", "system"])
def test_a_conversation_must_end_with_the_user(last_role: str) -> None:
    with pytest.raises(ValueError, match="must end with a user message"):
        chat_to_instruction([ChatTurn("user", "a"), ChatTurn(last_role, "b")])


def test_every_family_has_an_expected_model_input() -> None:
    assert set(EXPECTED_MODEL_INPUT) == {family.name for family in FAMILIES}


@pytest.mark.parametrize("family_name", sorted(EXPECTED_MODEL_INPUT))
def test_model_input_per_family(family_name: str) -> None:
    family = get_family(family_name)
    model_input = family.prompt_format.wrap(chat_to_instruction(CONVERSATION))
    assert model_input == EXPECTED_MODEL_INPUT[family_name]
