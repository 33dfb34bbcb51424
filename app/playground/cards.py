"""What the model cards say about each family, as the API hands it to the playground.

The generation settings come from the family registry (`Family.recommended`), the single
source of truth; this module only adds the example instructions the cards start from, and the
pydantic shapes of `GET /families`.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from app.core.families import FAMILIES, Family

_LAMINI_CARD = "LaMini-LM model cards (MBZUAI)"
_LAMINI_EXAMPLE = (
    "Please let me know your thoughts on the given place and why you think it deserves to be "
    'visited: \n"Barcelona, Spain"'
)

# The example instruction of each family's model card. The flant5-dolly card shows none; its
# example is ours and has line breaks, which that family's newline hack carries.
EXAMPLES: dict[str, tuple[tuple[str, str], ...]] = {
    "lamini-t5": ((_LAMINI_EXAMPLE, _LAMINI_CARD),),
    "lamini-flan-t5": ((_LAMINI_EXAMPLE, _LAMINI_CARD),),
    "lamini-cerebras": ((_LAMINI_EXAMPLE, _LAMINI_CARD),),
    "lamini-gpt": ((_LAMINI_EXAMPLE, _LAMINI_CARD),),
    "lamini-neo": ((_LAMINI_EXAMPLE, _LAMINI_CARD),),
    "opt-iml": (("What is the color of a carrot?\nA:", "OPT-IML model card (facebook)"),),
    "flant5-dolly": (
        (
            "Write a short list of three things to pack for a day at the beach.\n"
            "Put each item on its own line.",
            "lamini-serve (the flant5-dolly card shows no example)",
        ),
    ),
}


class Example(BaseModel):
    """An instruction to start from, and where it comes from."""

    instruction: str
    source: str


class RecommendedSettings(BaseModel):
    """The generation settings the family's model card recommends."""

    do_sample: bool = Field(description="Sampling (true) or greedy decoding (false).")
    temperature: float
    top_p: float
    max_new_tokens: int
    repetition_penalty: float


class FamilyCard(BaseModel):
    """One family: its prompt format, its card's settings and example instructions."""

    name: str
    description: str
    task: str
    prompt_format: str
    stop_sequences: list[str] = Field(
        description="Stop sequences the prompt format adds to every request."
    )
    recommended: RecommendedSettings
    examples: list[Example]


def family_card(family: Family) -> FamilyCard:
    recommended = family.recommended
    return FamilyCard(
        name=family.name,
        description=family.description,
        task=family.task.value,
        prompt_format=family.prompt_format.name,
        stop_sequences=list(family.prompt_format.stop_sequences),
        recommended=RecommendedSettings(
            do_sample=recommended.do_sample,
            temperature=recommended.temperature,
            top_p=recommended.top_p,
            max_new_tokens=recommended.max_new_tokens,
            repetition_penalty=recommended.repetition_penalty,
        ),
        examples=[
            Example(instruction=text, source=source) for text, source in EXAMPLES[family.name]
        ],
    )


def family_cards() -> list[FamilyCard]:
    return [family_card(family) for family in FAMILIES]
