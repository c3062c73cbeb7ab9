"""Absolute positional encodings, added to the token embeddings at the input.

Shapes: B batch, T sequence length, C model width.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def sinusoidal_table(position_ids: torch.Tensor, dim: int, base: float = 10000.0) -> torch.Tensor:
    """Compute the sinusoidal encoding of Vaswani et al. 2017 at any positions.

    PE(pos, 2i) = sin(pos / base^(2i/C)) and PE(pos, 2i+1) = cos(pos / base^(2i/C)).

    Args:
        position_ids: integer positions of any shape.
        dim: encoding width C (odd widths drop the last cosine).
        base: the wavelength base, 10000 in the paper.

    Returns:
        A float32 tensor of shape ``position_ids.shape + (dim,)``.
    """
    half = (dim + 1) // 2
    exponent = torch.arange(half, dtype=torch.float32, device=position_ids.device) * 2 / dim
    inv_freq = torch.exp(-math.log(base) * exponent)  # (C/2,) = base^(-2i/C)
    angles = position_ids.to(torch.float32).unsqueeze(-1) * inv_freq  # (..., C/2)
    table = torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)  # (..., 2 * C/2)
    return table[..., :dim]


class SinusoidalPositionalEncoding(nn.Module):
    """Fixed sinusoidal encoding, defined for every position with no table limit.

    Args:
        dim: model width C.
        base: wavelength base (default 10000).
    """

    def __init__(self, *, dim: int, base: float = 10000.0) -> None:
        super().__init__()
        self.dim = dim
        self.base = base

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Return the encoding for ``position_ids`` (B, T) as (B, T, C) in ``dtype``."""
        return sinusoidal_table(position_ids, self.dim, self.base).to(dtype)


class LearnedPositionalEmbedding(nn.Module):
    """A learned table of absolute position vectors (GPT-2, BERT).

    Args:
        num_positions: the table length; positions must be below it.
        dim: model width C.
    """

    def __init__(self, *, num_positions: int, dim: int) -> None:
        super().__init__()
        self.num_positions = num_positions
        self.weight = nn.Parameter(torch.empty(num_positions, dim))
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Look up ``position_ids`` (B, T) and return (B, T, C).

        Raises:
            ValueError: when a position is negative or reaches the table length,
                before any indexing happens.
        """
        if position_ids.numel():
            highest = int(position_ids.max())
            lowest = int(position_ids.min())
            if highest >= self.num_positions or lowest < 0:
                bad = highest if highest >= self.num_positions else lowest
                raise ValueError(
                    f"learned positions: position {bad} is outside the table of "
                    f"{self.num_positions} positions (max_seq_len); use inputs of at most "
                    f"{self.num_positions} tokens including the cache, or another encoding"
                )
        out = nn.functional.embedding(position_ids, self.weight)
        return out if dtype is None else out.to(dtype)
