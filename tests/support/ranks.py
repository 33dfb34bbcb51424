"""How high a lower-precision engine's first tokens rank in a float32 model's own scores.

Random-weight twins score many tokens almost alike, so int8 or bfloat16 rounding often flips
the greedy choice between near-ties; exact first-token agreement then says more about the host's
kernels than about the engine. The rank of the chosen token in the float32 scores (0: the
float32 argmax) separates a near-tie flip (a low rank) from a broken model (ranks around half
the vocabulary).
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel


def first_token_ranks(
    model: PreTrainedModel, prompts: list[list[int]], candidates: list[list[int]]
) -> list[int]:
    """The rank of each candidate's first token in `model`'s scores after its prompt."""
    ranks = []
    with torch.inference_mode():
        for prompt, candidate in zip(prompts, candidates, strict=True):
            ids = torch.tensor([prompt])
            if model.config.is_encoder_decoder:
                start = torch.tensor([[model.config.decoder_start_token_id]])
                scores = model(input_ids=ids, decoder_input_ids=start).logits[0, -1]
            else:
                scores = model(input_ids=ids).logits[0, -1]
            ranks.append(int((scores > scores[candidate[0]]).sum()))
    return ranks
