"""Norms against torch.nn references, float64 closed forms and half-precision inputs."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from blocklab.nn import BatchNorm, LayerNorm, RMSNorm, ScaleNorm, build_norm

C = 16


def randomize(module: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.normal_()
    return module


def rms_reference(x: torch.Tensor, eps: float) -> torch.Tensor:
    x = x.double()
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)


# References -----------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False])
def test_layernorm_torch(bias):
    ours = randomize(LayerNorm(dim=C, eps=1e-5, bias=bias))
    theirs = torch.nn.LayerNorm(C, eps=1e-5, bias=bias)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(3, 5, C) * 4 + 2
    assert_close(ours(x), theirs(x))


def test_rmsnorm_torch():
    ours = randomize(RMSNorm(dim=C, eps=1e-6))
    theirs = torch.nn.RMSNorm(C, eps=1e-6)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(3, 5, C) * 4 + 2
    assert_close(ours(x), theirs(x))


def test_rmsnorm_bias():
    ours = randomize(RMSNorm(dim=C, eps=1e-6, bias=True))
    theirs = torch.nn.RMSNorm(C, eps=1e-6)
    theirs.weight.data.copy_(ours.weight.data)
    x = torch.randn(3, 5, C)
    assert_close(ours(x), theirs(x) + ours.bias)


@pytest.mark.parametrize("cast", ["cast_then_scale", "scale_then_cast"])
def test_rmsnorm_unit_offset(cast):
    module = RMSNorm(dim=C, eps=1e-6, unit_offset=True, cast=cast)
    assert torch.equal(module.weight, torch.zeros(C))
    randomize(module)
    x = torch.randn(3, 5, C)
    expected = rms_reference(x, 1e-6) * (1 + module.weight.double())
    assert_close(module(x).double(), expected, rtol=1e-5, atol=1e-6)


def test_scalenorm_closed_form():
    module = ScaleNorm(dim=C, eps=1e-5)
    assert module.scale.item() == pytest.approx(C**0.5)
    with torch.no_grad():
        module.scale.fill_(1.7)
    x = torch.randn(3, 5, C)
    expected = 1.7 * x.double() / x.double().norm(dim=-1, keepdim=True)
    assert_close(module(x).double(), expected, rtol=1e-5, atol=1e-6)


def test_batchnorm_torch_training():
    # Over the real tokens only, a padding-aware BatchNorm is BatchNorm1d.
    ours = randomize(BatchNorm(dim=C))
    theirs = torch.nn.BatchNorm1d(C)
    theirs.weight.data.copy_(ours.weight.data)
    theirs.bias.data.copy_(ours.bias.data)
    x = torch.randn(3, 6, C) * 3 + 1
    mask = torch.tensor([[1] * 6, [0, 0, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]]).bool()
    out = ours.train()(x, mask)
    expected = theirs.train()(x[mask])
    assert_close(out[mask], expected)
    assert_close(ours.running_mean, theirs.running_mean)
    assert_close(ours.running_var, theirs.running_var)


def test_batchnorm_torch_eval():
    ours = randomize(BatchNorm(dim=C))
    theirs = torch.nn.BatchNorm1d(C)
    x = torch.randn(4, 5, C)
    ours.train()(x)
    theirs.train()(x.reshape(-1, C))
    theirs.weight.data.copy_(ours.weight.data)
    theirs.bias.data.copy_(ours.bias.data)
    y = torch.randn(2, 3, C)
    assert_close(ours.eval()(y), theirs.eval()(y.reshape(-1, C)).reshape(2, 3, C))


# Batch dependence -----------------------------------------------------------


@pytest.mark.parametrize("kind", ["layernorm", "rmsnorm", "scalenorm"])
def test_token_norms_batch_independent(kind):
    module = randomize(build_norm(kind, dim=C, eps=1e-5, bias=True)).train()
    x = torch.randn(4, 5, C)
    other = x.clone()
    other[1:] = torch.randn(3, 5, C) * 10
    assert torch.equal(module(x)[0], module(other)[0])
    assert torch.equal(module(x[:1])[0], module(x)[0])


def test_batchnorm_batch_dependent():
    module = BatchNorm(dim=C).train()
    x = torch.randn(4, 5, C)
    other = x.clone()
    other[1:] = torch.randn(3, 5, C) * 10
    assert not torch.allclose(module(x)[0], module(other)[0])


def test_batchnorm_ignores_padding_length():
    real = torch.randn(2, 4, C)
    short = torch.cat((real, torch.randn(2, 1, C) * 50), dim=1)  # (2, 5, C)
    long = torch.cat((real, torch.randn(2, 9, C) * 50), dim=1)  # (2, 13, C)
    short_mask = torch.cat((torch.ones(2, 4), torch.zeros(2, 1)), dim=1)
    long_mask = torch.cat((torch.ones(2, 4), torch.zeros(2, 9)), dim=1)
    first, second = BatchNorm(dim=C).train(), BatchNorm(dim=C).train()
    assert_close(first(short, short_mask)[:, :4], second(long, long_mask)[:, :4])
    assert_close(first.running_mean, second.running_mean)
    assert_close(first.running_var, second.running_var)


def test_batchnorm_all_padding_finite():
    module = BatchNorm(dim=C).train()
    out = module(torch.randn(2, 3, C), torch.zeros(2, 3))
    assert torch.isfinite(out).all()
    assert torch.equal(module.running_mean, torch.zeros(C))


# RMSNorm cast order and unit offset in reduced precision ----------------------


def bf16_input() -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(8, 64, C).to(torch.bfloat16)
    weight = (torch.randn(C) * 0.7 + 1).to(torch.bfloat16)
    return x, weight


def rmsnorm_bf16(cast: str, weight: torch.Tensor, unit_offset: bool = False) -> RMSNorm:
    module = RMSNorm(dim=C, eps=1e-6, cast=cast, unit_offset=unit_offset).to(torch.bfloat16)
    module.weight.data.copy_(weight)
    return module


def test_cast_orders_differ_bf16():
    x, weight = bf16_input()
    cast_first = rmsnorm_bf16("cast_then_scale", weight)(x)
    scale_first = rmsnorm_bf16("scale_then_cast", weight)(x)
    assert cast_first.dtype == torch.bfloat16
    assert scale_first.dtype == torch.bfloat16
    assert not torch.equal(cast_first, scale_first)


def test_cast_orders_agree_float32():
    x, weight = (t.float() for t in bf16_input())
    cast_first = RMSNorm(dim=C, cast="cast_then_scale")
    scale_first = RMSNorm(dim=C, cast="scale_then_cast")
    cast_first.weight.data.copy_(weight)
    scale_first.weight.data.copy_(weight)
    assert torch.equal(cast_first(x), scale_first(x))


def test_cast_then_scale_bf16():
    # Normalize in float32, round to bf16, then multiply by the bf16 gain.
    x, weight = bf16_input()
    expected = (rms_reference(x, 1e-6).to(torch.bfloat16).double() * weight.double()).to(torch.bfloat16)
    out = rmsnorm_bf16("cast_then_scale", weight)(x)
    assert_close(out, expected, rtol=2**-8, atol=0)


def test_scale_then_cast_bf16():
    # Normalize and multiply in float32, round to bf16 once at the end.
    x, weight = bf16_input()
    expected = (rms_reference(x, 1e-6) * weight.double()).to(torch.bfloat16)
    out = rmsnorm_bf16("scale_then_cast", weight)(x)
    assert_close(out, expected, rtol=2**-8, atol=0)
    # One rounding is closer to the exact value than two.
    exact = rms_reference(x, 1e-6) * weight.double()
    cast_first = rmsnorm_bf16("cast_then_scale", weight)(x)
    assert (out.double() - exact).abs().mean() < (cast_first.double() - exact).abs().mean()


def test_unit_offset_tiny_gain_bf16():
    # 1 + 1e-4 rounds to 1 in bf16, so the gain only survives when the 1 is
    # added in float32 and the product is formed before the cast.
    x, _ = bf16_input()
    tiny = torch.full((C,), 1e-4, dtype=torch.bfloat16)
    with_gain = rmsnorm_bf16("scale_then_cast", tiny, unit_offset=True)(x)
    without = rmsnorm_bf16("scale_then_cast", torch.zeros(C, dtype=torch.bfloat16), unit_offset=True)(x)
    assert not torch.equal(with_gain, without)
    expected = (rms_reference(x, 1e-6) * (1 + tiny.double())).to(torch.bfloat16)
    mismatched = (with_gain != expected).float().mean()
    assert mismatched < 0.01


# Half-precision inputs with large values ----------------------------------------


@pytest.mark.parametrize("kind", ["layernorm", "rmsnorm", "batchnorm", "scalenorm"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_large_half_inputs_finite(kind, dtype):
    # 300^2 = 90000 overflows float16 (max 65504); statistics must run in float32.
    module = randomize(build_norm(kind, dim=C, eps=1e-5, bias=True)).train()
    reference = randomize(build_norm(kind, dim=C, eps=1e-5, bias=True)).train()
    reference.load_state_dict(module.state_dict())
    x = (300 + 20 * torch.randn(2, 5, C)).to(dtype)
    out = module.to(dtype)(x)
    expected = reference(x.float())
    assert out.dtype == dtype
    assert torch.isfinite(out).all()
    tolerance = 1e-2 if dtype == torch.float16 else 5e-2
    assert_close(out.float(), expected, rtol=tolerance, atol=tolerance)


def test_rmsnorm_rejects_unknown_cast():
    with pytest.raises(ValueError, match="RMSNorm.cast"):
        RMSNorm(dim=C, cast="cast_last")


def test_build_norm_rejects_unknown():
    with pytest.raises(ValueError, match="norm: invalid value 'groupnorm'"):
        build_norm("groupnorm", dim=C, eps=1e-5)


def test_batchnorm_zeroes_padding():
    # Padding normalized with real-token statistics could grow without bound
    # across layers, so it leaves the norm as zeros.
    module = randomize(BatchNorm(dim=C)).train()
    x = torch.randn(2, 4, C) * 100
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1]])
    for mode in (module.train(), module.eval()):
        out = mode(x, mask)
        assert torch.equal(out[~mask.bool()], torch.zeros(2, C))
