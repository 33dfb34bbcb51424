"""T5's encoder pass as `t5_encoder.py` computes it gives transformers' encoder states, for T5
(ReLU) and Flan-T5 (gated GELU), over a batch of right-padded inputs of different lengths."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import T5ForConditionalGeneration

from app.engines.stepwise.precision import quantize_linear_layers
from app.engines.stepwise.t5_encoder import T5EncoderPass
from tests.support.t5_configs import CONFIGS, PAD

INPUTS = [[5, 6, 7], list(range(2, 32)), [9] * 12]


def _padded(inputs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, inputs))
    ids = torch.tensor([prompt + [PAD] * (width - len(prompt)) for prompt in inputs])
    mask = torch.tensor([[1] * len(prompt) + [0] * (width - len(prompt)) for prompt in inputs])
    return ids, mask


def test_encoder_pass_gives_each_input_the_states_it_has_alone() -> None:
    """float32: padding changes nothing a real token reads (the mask is applied)."""
    torch.manual_seed(0)
    reference = T5ForConditionalGeneration(CONFIGS["flan-t5"]).eval()
    encoder = T5EncoderPass(copy.deepcopy(reference))
    ids, mask = _padded(INPUTS)

    with torch.inference_mode():
        states = encoder(ids, mask)
        alone = [
            reference.get_encoder()(input_ids=torch.tensor([prompt])).last_hidden_state[0]
            for prompt in INPUTS
        ]

    for row, prompt in enumerate(INPUTS):  # padding's own states are never read
        torch.testing.assert_close(states[row, : len(prompt)], alone[row])


@pytest.mark.parametrize("int8", [False, True], ids=["float32", "int8"])
@pytest.mark.parametrize("name", CONFIGS)
def test_encoder_pass_gives_transformers_states(name: str, int8: bool) -> None:
    """The same padded batch through transformers' encoder (in int8 the activations' scale
    depends on the whole batch, padding included, so the batch must be the same)."""
    torch.manual_seed(0)
    reference = T5ForConditionalGeneration(CONFIGS[name]).eval()
    if int8:
        reference = quantize_linear_layers(reference)
    encoder = T5EncoderPass(copy.deepcopy(reference))
    ids, mask = _padded(INPUTS)

    with torch.inference_mode():
        states = encoder(ids, mask)
        expected = reference.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state

    real = mask.bool()
    torch.testing.assert_close(states[real], expected[real])
