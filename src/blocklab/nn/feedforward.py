"""The position-wise feed-forward network, plain or gated.

Plain: FFN(x) = act(x W_up) W_down. Gated (GLU variants, Shazeer 2020):
FFN(x) = (act(x W_gate) * (x W_up)) W_down, three matrices, so SwiGLU is
(SiLU(xW) * xV) W2 and not x * SiLU(x).

Shapes: B batch, T length, C width, F hidden width.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

from blocklab.config import FFNS, GATED_ACTIVATIONS
from blocklab.nn import kernels


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


def _silu_backward(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten.silu_backward(grad, x)


def _gelu_backward(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten.gelu_backward(grad, x)


def _gelu_tanh_backward(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten.gelu_backward(grad, x, approximate="tanh")


def _relu_backward(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten.threshold_backward(grad, x, 0)


# The gradient of each gated activation with respect to its input, given the
# output gradient and the input (the same kernels autograd runs).
GATED_BACKWARDS = {
    "swiglu": _silu_backward,
    "geglu": _gelu_backward,
    "geglu_tanh": _gelu_tanh_backward,
    "reglu": _relu_backward,
}


# Below this many elements two PyTorch operators cost less than a ctypes call.
KERNEL_MIN_ELEMENTS = 4096


def _fusable(activation: str, gate: torch.Tensor, up: torch.Tensor) -> bool:
    """Return True when the compiled SwiGLU kernel can compute act(gate) * up."""
    return (
        activation == "swiglu" and gate.numel() >= KERNEL_MIN_ELEMENTS and gate.shape == up.shape
        and gate.is_contiguous() and up.is_contiguous() and kernels.usable(gate, up)
    )


def _gated_forward(gate: torch.Tensor, up: torch.Tensor, activation: str) -> torch.Tensor:
    if _fusable(activation, gate, up):
        return kernels.swiglu_forward(gate, up)
    return ACTIVATIONS[activation](gate).mul_(up)


class _GatedActivationFunction(torch.autograd.Function):
    """act(gate) * up that saves only gate and up, (..., F) each.

    Autograd would also keep act(gate), a third (..., F) tensor per layer; the
    backward recomputes it instead. Gradients are the ones autograd computes:
    act'(gate) (dy * up) for gate and dy * act(gate) for up.
    """

    @staticmethod
    def forward(ctx, gate: torch.Tensor, up: torch.Tensor, activation: str) -> torch.Tensor:
        ctx.save_for_backward(gate, up)
        ctx.activation = activation
        return _gated_forward(gate, up, activation)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        gate, up = ctx.saved_tensors
        if _fusable(ctx.activation, gate, up):
            grad_gate, grad_up = kernels.swiglu_backward(
                grad.contiguous(), gate, up, ctx.needs_input_grad[0], ctx.needs_input_grad[1],
            )
            return grad_gate, grad_up, None
        grad_gate = grad_up = None
        if ctx.needs_input_grad[0]:
            grad_gate = GATED_BACKWARDS[ctx.activation](grad * up, gate)
        if ctx.needs_input_grad[1]:
            grad_up = ACTIVATIONS[ctx.activation](gate).mul_(grad)
        return grad_gate, grad_up, None


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
            gate, up = self.gate(x), self.up(x)  # (B, T, F) each
            if torch.is_grad_enabled() and (gate.requires_grad or up.requires_grad):
                hidden = _GatedActivationFunction.apply(gate, up, self.activation)
            else:
                hidden = _gated_forward(gate, up, self.activation)
        else:
            hidden = self.act(self.up(x))  # (B, T, F)
        return self.down(self.dropout(hidden))
