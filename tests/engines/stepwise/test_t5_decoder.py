"""T5's decoder as `t5_decoder.py` computes it gives transformers' logits: for T5 (ReLU) and
Flan-T5 (gated GELU, untied output), rows with inputs of very different lengths, rows joining
mid-way, each row reading its own columns - through the CPU's row loop and through SDPA by row
groups, which reads other rows' padding and needs the masks."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import T5ForConditionalGeneration

from app.engines.stepwise import row_attention
from app.engines.stepwise.seq2seq import Seq2SeqRows, Seq2SeqStepper
from app.engines.stepwise.slots import CacheFormat
from tests.support.row_groups import a_group_reads_padding
from tests.support.t5_configs import CONFIGS, PAD, START

# several cross-attention row groups, one of them over inputs of 30 and 27 tokens
FIRST_INPUTS = [[5, 6, 7], list(range(2, 32)), list(range(2, 29)), [9] * 5]
JOINING_INPUTS = [list(range(3, 60)), [4, 8]]  # join after three steps: self-attention groups too


def _reference_logits(
    model: T5ForConditionalGeneration, inputs: list[list[int]], outputs: list[list[int]]
) -> torch.Tensor:
    """transformers' next-token logits of each row alone, no cache: [rows, vocabulary]."""
    return torch.stack(
        [
            model(
                input_ids=torch.tensor([prompt]), decoder_input_ids=torch.tensor([[START, *made]])
            ).logits[0, -1]
            for prompt, made in zip(inputs, outputs, strict=True)
        ]
    )


def _encoded(stepper: Seq2SeqStepper, inputs: list[list[int]]) -> Seq2SeqRows:
    """`inputs`' rows, their encoder pass run a layer a turn as a small token budget makes it."""
    prefill = stepper.start(inputs)
    while (done := stepper.advance(prefill, 1)) is None:
        pass
    return done[0]


def _step(stepper: Seq2SeqStepper, rows: Seq2SeqRows, outputs: list[list[int]]) -> torch.Tensor:
    logits = stepper.decode(rows)
    rows.next_ids = logits.argmax(dim=-1)
    for made, token in zip(outputs, rows.next_ids.tolist(), strict=True):
        made.append(token)
    return logits


@pytest.mark.parametrize("row_loop", [True, False], ids=["row-loop", "sdpa-groups"])
@pytest.mark.parametrize("name", CONFIGS)
def test_decode_steps_give_transformers_logits(
    name: str, row_loop: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert a_group_reads_padding([len(prompt) for prompt in FIRST_INPUTS])
    torch.manual_seed(0)
    reference = T5ForConditionalGeneration(CONFIGS[name]).eval()
    stepper = Seq2SeqStepper(copy.deepcopy(reference), PAD, CacheFormat(1))
    if not row_loop:
        monkeypatch.setattr(row_attention, "fits", lambda *_: False)

    with torch.inference_mode():
        rows = _encoded(stepper, FIRST_INPUTS)
        inputs, outputs = list(FIRST_INPUTS), [[] for _ in FIRST_INPUTS]
        for step in range(6):
            if step == 3:
                rows = stepper.join(rows, _encoded(stepper, JOINING_INPUTS))
                inputs += JOINING_INPUTS
                outputs += [[] for _ in JOINING_INPUTS]
            expected = _reference_logits(reference, inputs, outputs)
            torch.testing.assert_close(_step(stepper, rows, outputs), expected)
