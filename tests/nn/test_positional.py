"""Absolute encodings against a float64 closed form, and the learned table's limit."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from blocklab.nn import LearnedPositionalEmbedding, SinusoidalPositionalEncoding


def sinusoid_reference(positions: list[int], dim: int) -> torch.Tensor:
    """PE(pos, 2i) = sin(pos / 10000^(2i/C)), PE(pos, 2i+1) = cos(same), in float64."""
    table = torch.zeros(len(positions), dim, dtype=torch.float64)
    for row, pos in enumerate(positions):
        for column in range(dim):
            i = column // 2
            angle = pos / 10000 ** (2 * i / dim)
            table[row, column] = math.sin(angle) if column % 2 == 0 else math.cos(angle)
    return table


@pytest.mark.parametrize("dim", [16, 15, 2])
def test_sinusoidal_closed_form(dim):
    positions = list(range(40))
    encoding = SinusoidalPositionalEncoding(dim=dim)
    out = encoding(torch.tensor([positions]))
    assert out.shape == (1, 40, dim)
    assert out.dtype == torch.float32
    assert_close(out[0].double(), sinusoid_reference(positions, dim), rtol=0, atol=2e-6)


def test_sinusoidal_far_positions():
    # No table: positions far past any trained length still follow the formula.
    # float32 angles near 5000 rad carry about 5e-4 rad of rounding error.
    positions = [1000, 4097, 5000]
    out = SinusoidalPositionalEncoding(dim=8)(torch.tensor([positions]))
    assert_close(out[0].double(), sinusoid_reference(positions, 8), rtol=0, atol=1e-3)


def test_sinusoidal_output_dtype():
    out = SinusoidalPositionalEncoding(dim=8)(torch.arange(4)[None], dtype=torch.bfloat16)
    assert out.dtype == torch.bfloat16


def test_learned_lookup():
    table = LearnedPositionalEmbedding(num_positions=8, dim=4)
    positions = torch.tensor([[0, 3, 7], [7, 1, 0]])
    assert_close(table(positions), table.weight[positions])


@pytest.mark.parametrize("bad", [8, 100, -1])
def test_learned_rejects_before_indexing(bad, monkeypatch):
    table = LearnedPositionalEmbedding(num_positions=8, dim=4)

    def no_lookup(*args, **kwargs):
        raise AssertionError("the table was indexed before the position check")

    monkeypatch.setattr(torch.nn.functional, "embedding", no_lookup)
    with pytest.raises(ValueError) as error:
        table(torch.tensor([[0, bad]]))
    message = str(error.value)
    assert f"position {bad}" in message
    assert "table of 8 positions" in message
    assert "max_seq_len" in message
