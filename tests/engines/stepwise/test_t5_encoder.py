"""T5's encoder pass as `t5_encoder.py` computes it gives transformers' encoder states, for T5
(ReLU) and Flan-T5 (gated GELU), over a batch of right-padded inputs of different lengths,
whether it runs whole or a layer at a time."""

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


def _encode(
    encoder: T5EncoderPass, ids: torch.Tensor, mask: torch.Tensor, layers_a_turn: int
) -> torch.Tensor:
    """The states of a pass advanced `layers_a_turn` layers at a time, as the engine's turns do."""
    progress = encoder.begin(ids, mask)
    while progress.layers < encoder.depth:
        encoder.advance(progress, layers_a_turn)
    return encoder.states(progress)


def test_encoder_pass_gives_each_input_the_states_it_has_alone() -> None:
    """float32: padding changes nothing a real token reads (the mask is applied)."""
    torch.manual_seed(0)
    reference = T5ForConditionalGeneration(CONFIGS["flan-t5"]).eval()
    encoder = T5EncoderPass(copy.deepcopy(reference))
    ids, mask = _padded(INPUTS)

    with torch.inference_mode():
        states = _encode(encoder, ids, mask, encoder.depth)
        alone = [
            reference.get_encoder()(input_ids=torch.tensor([prompt])).last_hidden_state[0]
            for prompt in INPUTS
        ]

    for row, prompt in enumerate(INPUTS):  # padding's own states are never read
        torch.testing.assert_close(states[row, : len(prompt)], alone[row])


@pytest.mark.parametrize("layers_a_turn", [1, 3], ids=["a-layer-a-turn", "whole"])
@pytest.mark.parametrize("int8", [False, True], ids=["float32", "int8"])
@pytest.mark.parametrize("name", CONFIGS)
def test_encoder_pass_gives_transformers_states(name: str, int8: bool, layers_a_turn: int) -> None:
    """The same padded batch through transformers' encoder (in int8 the activations' scale
    depends on the whole batch, padding included, so the batch must be the same)."""
    torch.manual_seed(0)
    reference = T5ForConditionalGeneration(CONFIGS[name]).eval()
    if int8:
        reference = quantize_linear_layers(reference)
    encoder = T5EncoderPass(copy.deepcopy(reference))
    ids, mask = _padded(INPUTS)

    with torch.inference_mode():
        states = _encode(encoder, ids, mask, layers_a_turn)
        expected = reference.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state

    real = mask.bool()
    torch.testing.assert_close(states[real], expected[real])


def test_a_pass_gives_states_only_after_its_last_layer() -> None:
    encoder = T5EncoderPass(T5ForConditionalGeneration(CONFIGS["t5"]).eval())
    ids, mask = _padded(INPUTS)

    with torch.inference_mode():
        progress = encoder.begin(ids, mask)
        encoder.advance(progress, 1)
        with pytest.raises(ValueError, match="1 of 2 layers"):
            encoder.states(progress)
        encoder.advance(progress, 5)  # more than are left: the pass ends at its last layer

    assert progress.layers == encoder.depth == 2
