"""GPT-2's decode step as `gpt2_decoder.py` computes it gives transformers' logits: prompts of
very different lengths (left-padded), rows joining mid-way, each row reading its own columns -
through the CPU's row loop and through SDPA by row groups, which reads other rows' padding
and needs the mask. The same logits as a step through transformers' `GPT2Model` over the same
batch, to the last bit, in float32 and int8 (whose activations' scale is the batch's); in
float32 also each row's logits alone."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from app.engines.stepwise import row_attention
from app.engines.stepwise.causal import CausalRows, CausalStepper
from app.engines.stepwise.precision import quantize_linear_layers
from app.engines.stepwise.slots import CacheFormat
from tests.support.row_groups import a_group_reads_padding

CONFIG = GPT2Config(
    vocab_size=128, n_positions=128, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0,
    embd_pdrop=0.0, attn_pdrop=0.0, pad_token_id=0,
)  # fmt: skip
FIRST_PROMPTS = [[5, 6, 7], list(range(2, 42)), list(range(2, 37)), [9] * 5]
JOINING_PROMPTS = [list(range(3, 70)), [4, 8]]  # join after three steps


def _reference_logits(model: GPT2LMHeadModel, sequences: list[list[int]]) -> torch.Tensor:
    """transformers' next-token logits of each row alone, no cache: [rows, vocabulary]."""
    return torch.stack([model(input_ids=torch.tensor([ids])).logits[0, -1] for ids in sequences])


def _prefilled(stepper: CausalStepper, prompts: list[list[int]]) -> tuple[CausalRows, list[int]]:
    """`prompts`' rows and the greedy token each feeds next."""
    rows, logits = stepper.advance(stepper.start(prompts), max(map(len, prompts)))
    rows.next_ids = logits.argmax(dim=-1)
    return rows, rows.next_ids.tolist()


@pytest.mark.parametrize("int8", [False, True], ids=["float32", "int8"])
@pytest.mark.parametrize("row_loop", [True, False], ids=["row-loop", "sdpa-groups"])
def test_decode_steps_give_transformers_logits(
    row_loop: bool, int8: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert a_group_reads_padding([len(prompt) for prompt in FIRST_PROMPTS])
    torch.manual_seed(0)
    reference = GPT2LMHeadModel(CONFIG).eval()
    if int8:
        reference = quantize_linear_layers(reference)
    ours = CausalStepper(copy.deepcopy(reference), 0, CacheFormat(1))
    through_transformers = CausalStepper(copy.deepcopy(reference), 0, CacheFormat(1))
    assert ours._gpt2_step is not None
    through_transformers._gpt2_step = None
    if not row_loop:
        monkeypatch.setattr(row_attention, "fits", lambda *_: False)

    with torch.inference_mode():
        rows, fed = _prefilled(ours, FIRST_PROMPTS)
        their_rows, _ = _prefilled(through_transformers, FIRST_PROMPTS)
        sequences = [[*prompt, token] for prompt, token in zip(FIRST_PROMPTS, fed, strict=True)]
        for step in range(6):
            if step == 3:
                joining, fed = _prefilled(ours, JOINING_PROMPTS)
                rows = ours.join(rows, joining)
                their_joining, _ = _prefilled(through_transformers, JOINING_PROMPTS)
                their_rows = through_transformers.join(their_rows, their_joining)
                sequences += [[*p, t] for p, t in zip(JOINING_PROMPTS, fed, strict=True)]
            logits = ours.decode(rows)
            assert torch.equal(logits, through_transformers.decode(their_rows))
            if not int8:
                torch.testing.assert_close(logits, _reference_logits(reference, sequences))
            rows.next_ids = their_rows.next_ids = logits.argmax(dim=-1)
            for sequence, token in zip(sequences, rows.next_ids.tolist(), strict=True):
                sequence.append(token)
