"""The pieces T5's encoder and decoder passes share."""

from __future__ import annotations

import pytest
import torch

from app.engines.stepwise.precision import quantize_linear_layers
from app.engines.stepwise.t5_layers import stacked_linear


@pytest.mark.parametrize("int8", [False, True], ids=["float32", "int8"])
def test_stacked_linear_gives_each_linear_outputs_side_by_side(int8: bool) -> None:
    torch.manual_seed(0)
    linears = torch.nn.Sequential(*(torch.nn.Linear(16, size, bias=False) for size in (8, 8, 24)))
    if int8:
        linears = quantize_linear_layers(linears)
    inputs = torch.randn(5, 16)

    with torch.inference_mode():
        stacked = stacked_linear(list(linears))(inputs)
        separate = torch.cat([linear(inputs) for linear in linears], dim=-1)

    if int8:  # the same integer products and scales: the same numbers
        assert torch.equal(stacked, separate)
    else:  # one matrix product instead of three may sum in another order
        torch.testing.assert_close(stacked, separate, rtol=0, atol=1e-6)
