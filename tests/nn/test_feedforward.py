"""FeedForward: activations against F.gelu and closed forms, gating by hand, widths."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F
from torch.testing import assert_close

from blocklab.config import default_ffn_dim
from blocklab.nn import FeedForward

C, HIDDEN = 16, 40


def gelu_erf(x: torch.Tensor) -> torch.Tensor:
    x = x.double()
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    x = x.double()
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


PLAIN = {
    "relu": F.relu,
    "gelu": lambda h: F.gelu(h, approximate="none"),
    "gelu_tanh": lambda h: F.gelu(h, approximate="tanh"),
    "silu": lambda h: h * torch.sigmoid(h),
}
GATED = {
    "swiglu": lambda h: h * torch.sigmoid(h),
    "geglu": lambda h: F.gelu(h, approximate="none"),
    "geglu_tanh": lambda h: F.gelu(h, approximate="tanh"),
    "reglu": F.relu,
}


@pytest.mark.parametrize("activation", list(PLAIN))
@pytest.mark.parametrize("bias", [False, True])
def test_plain_by_hand(activation, bias):
    ffn = FeedForward(dim=C, hidden_dim=HIDDEN, activation=activation, bias=bias)
    assert ffn.gate is None
    x = torch.randn(2, 5, C) * 2
    hidden = PLAIN[activation](F.linear(x, ffn.up.weight, ffn.up.bias))
    expected = F.linear(hidden, ffn.down.weight, ffn.down.bias)
    assert_close(ffn(x), expected)


@pytest.mark.parametrize("activation", list(GATED))
@pytest.mark.parametrize("bias", [False, True])
def test_gated_by_hand(activation, bias):
    ffn = FeedForward(dim=C, hidden_dim=HIDDEN, activation=activation, bias=bias)
    x = torch.randn(2, 5, C) * 2
    gate = GATED[activation](F.linear(x, ffn.gate.weight, ffn.gate.bias))
    hidden = gate * F.linear(x, ffn.up.weight, ffn.up.bias)
    expected = F.linear(hidden, ffn.down.weight, ffn.down.bias)
    assert_close(ffn(x), expected)


def test_swiglu_is_not_x_silu_x():
    ffn = FeedForward(dim=C, hidden_dim=HIDDEN, activation="swiglu")
    x = torch.randn(2, 5, C)
    up = ffn.up(x)
    wrong = F.linear(up * torch.sigmoid(up), ffn.down.weight)
    assert not torch.allclose(ffn(x), wrong)


def test_gelu_modes_closed_form():
    # The FFN's two GELU modes are the erf form and the tanh approximation.
    x = torch.linspace(-6, 6, 241)
    for activation, reference in (("gelu", gelu_erf), ("gelu_tanh", gelu_tanh)):
        ffn = FeedForward(dim=1, hidden_dim=241, activation=activation)
        with torch.no_grad():
            ffn.up.weight.copy_(x[:, None])
        hidden = ffn.act(ffn.up(torch.ones(1, 1, 1)))[0, 0]
        assert_close(hidden.double(), reference(x), rtol=1e-6, atol=1e-6)


def test_gelu_modes_differ():
    x = torch.linspace(-3, 3, 61)
    exact = FeedForward(dim=1, hidden_dim=1, activation="gelu").act(x)
    approximate = FeedForward(dim=1, hidden_dim=1, activation="gelu_tanh").act(x)
    assert (exact - approximate).abs().max() > 1e-4


@pytest.mark.parametrize("activation", ["gelu", "swiglu"])
def test_acts_on_each_token(activation):
    ffn = FeedForward(dim=C, hidden_dim=HIDDEN, activation=activation, bias=True)
    x = torch.randn(2, 6, C)
    changed = x.clone()
    changed[1, 3] = torch.randn(C) * 10
    before, after = ffn(x), ffn(changed)
    keep = torch.ones(2, 6, dtype=torch.bool)
    keep[1, 3] = False
    assert torch.equal(before[keep], after[keep])
    assert not torch.allclose(before[1, 3], after[1, 3])


@pytest.mark.parametrize("d_model", [8, 64, 100, 128, 256, 768])
def test_default_gated_width(d_model):
    width = default_ffn_dim(d_model, gated=True)
    assert width % 8 == 0
    assert width >= 2 * 4 * d_model / 3
    assert width - 8 < 2 * 4 * d_model / 3
    assert default_ffn_dim(d_model, gated=False) == 4 * d_model


def test_default_width_multiple():
    assert default_ffn_dim(100, gated=True, multiple_of=64) == 320  # ceil(266.7 / 64) * 64
    assert default_ffn_dim(96, gated=True, multiple_of=1) == 256


@pytest.mark.parametrize("d_model", [32, 64, 100, 256])
def test_default_widths_equal_parameters(d_model):
    def count(activation: str) -> int:
        gated = activation == "swiglu"
        width = default_ffn_dim(d_model, gated=gated)
        ffn = FeedForward(dim=d_model, hidden_dim=width, activation=activation)
        return sum(p.numel() for p in ffn.parameters())

    plain, gated = count("gelu"), count("swiglu")
    assert plain == 8 * d_model**2
    assert abs(gated - plain) / plain < 0.04


def test_rejects_unknown_activation():
    with pytest.raises(ValueError, match="FeedForward.activation: invalid value 'tanh'"):
        FeedForward(dim=C, hidden_dim=HIDDEN, activation="tanh")
