"""The position-wise feed-forward network, plain or gated.

Plain: FFN(x) = act(x W_up) W_down. Gated (GLU variants, Shazeer 2020):
FFN(x) = (act(x W_gate) * (x W_up)) W_down, three matrices, so SwiGLU is
(SiLU(xW) * xV) W2 and not x * SiLU(x).

Shapes: B batch, T length, C width, F hidden width.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from blocklab.config import FFNS, GATED_ACTIVATIONS


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


# Each activation name maps to the elementwise function applied to x W_up
# (plain) or to x W_gate (gated).
ACTIVATIONS = {
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_tanh": _gelu_tanh,
    "silu": F.silu,
    "swiglu": F.silu,
    "geglu": F.gelu,
    "geglu_tanh": _gelu_tanh,
    "reglu": F.relu,
}


class FeedForward(nn.Module):
    """Feed-forward network applied to each token independently.

    Args:
        dim: C.
        hidden_dim: F.
        activation: relu, gelu (exact erf form), gelu_tanh (tanh approximation),
            silu, or gated swiglu, geglu, geglu_tanh, reglu.
        bias: biases on every projection.
        dropout: dropout on the hidden activations.

    Raises:
        ValueError: for an unknown activation.
    """

    def __init__(
        self, *, dim: int, hidden_dim: int, activation: str = "swiglu", bias: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"FeedForward.activation: invalid value {activation!r}; expected one of {', '.join(FFNS)}"
            )
        self.activation = activation
        self.gated = activation in GATED_ACTIVATIONS
        self.act = ACTIVATIONS[activation]
        self.gate = nn.Linear(dim, hidden_dim, bias=bias) if self.gated else None
        self.up = nn.Linear(dim, hidden_dim, bias=bias)
        self.down = nn.Linear(hidden_dim, dim, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map (B, T, C) to (B, T, C)."""
        if self.gated:
            hidden = self.act(self.gate(x)) * self.up(x)  # (B, T, F)
        else:
            hidden = self.act(self.up(x))  # (B, T, F)
        return self.down(self.dropout(hidden))
