"""Prompt formats: how an instruction becomes model input, and how model output is tidied.

Each family was trained with one format (see shared/MODELS.md); sending anything else makes the
small LaMini models ramble. The formats are data (a template plus a few switches) so that the
family registry can name them and tests can compare full strings.
"""

from __future__ import annotations

from dataclasses import dataclass

ALPACA_TEMPLATE = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)
ALPACA_NEXT_TURN = "### Instruction:"

# flant5-dolly model card: the T5 SentencePiece vocabulary has no newline or tab, so the model
# was trained with these stand-ins. The order of the output replacements matters.
NEWLINE_HACK_OUT: tuple[tuple[str, str], ...] = (
    (" _LB_> ", "\n"),
    (" _T_> ", "\t"),
    ("_LB_>", "\n"),
    ("_T_> ", "\t"),
    ("_LB_>", "\n"),
    ("_T_>", "\t"),
)


def encode_newline_hack(text: str) -> str:
    """The flant5-dolly card's input transform, byte for byte."""
    return " ".join(text.replace("\n", " <_LB_> ").replace("\t", " <_T_> ").split())


def decode_newline_hack(text: str) -> str:
    """The flant5-dolly card's output transform, applied in the card's order."""
    for old, new in NEWLINE_HACK_OUT:
        text = text.replace(old, new)
    return text


@dataclass(frozen=True)
class PromptFormat:
    """One training-time prompt format.

    `template` holds `{instruction}`; `bos_text` is written in front of it for models whose
    prompts must start with the bos token (OPT), so the model input is visible as a string and
    tokenised without adding special tokens again. `next_turn` is text the model produces when it
    starts a new (hallucinated) turn: generation stops there and tidying cuts it off.
    """

    name: str
    template: str = "{instruction}"
    bos_text: str = ""
    newline_hack: bool = False
    next_turn: str | None = None

    def wrap(self, instruction: str) -> str:
        """The exact text given to the tokenizer for `instruction`."""
        if self.newline_hack:
            instruction = encode_newline_hack(instruction)
        return self.bos_text + self.template.format(instruction=instruction)

    @property
    def static_prefix(self) -> str:
        """The text every wrapped prompt starts with (reusable as a cached prefix)."""
        return self.bos_text + self.template.split("{instruction}", 1)[0]

    @property
    def stop_sequences(self) -> tuple[str, ...]:
        """Stop sequences implied by the format, added to every request's own."""
        return (self.next_turn,) if self.next_turn else ()

    def tidy(self, generated: str, model_input: str | None = None) -> str:
        """Turn raw generated text into the answer a user should see.

        Removes an echoed prompt (decoder-only engines that return it), cuts at a following
        turn, reverses the newline hack, and strips surrounding whitespace.
        """
        if model_input:
            for echoed in (model_input, model_input.removeprefix(self.bos_text)):
                if echoed and generated.startswith(echoed):
                    generated = generated[len(echoed) :]
                    break
        if self.next_turn and self.next_turn in generated:
            generated = generated.split(self.next_turn, 1)[0]
        if self.newline_hack:
            generated = decode_newline_hack(generated)
        return generated.strip()


RAW = PromptFormat(name="raw")
RAW_WITH_BOS = PromptFormat(name="raw-with-bos", bos_text="</s>")
ALPACA = PromptFormat(name="alpaca", template=ALPACA_TEMPLATE, next_turn=ALPACA_NEXT_TURN)
NEWLINE_HACK = PromptFormat(name="newline-hack", newline_hack=True)
