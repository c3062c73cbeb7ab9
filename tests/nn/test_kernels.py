"""The compiled CPU kernels against float64 formulas, and the modules with and without them."""

from __future__ import annotations

import logging

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn import functional as F
from torch.testing import assert_close

from blocklab.nn import Attention, FeedForward, RMSNorm, apply_rotary, kernels
from blocklab.nn.attention import split_rotate

pytestmark = pytest.mark.skipif(kernels.load() is None, reason="no C compiler to build blocklab.nn.kernels")


def rms_reference(x: torch.Tensor, gain: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * gain


def rope_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool) -> torch.Tensor:
    """Rotate float64 x (B, H, T, D) pair by pair, written out with complex numbers."""
    half = cos.shape[-1]
    rotary = x[..., : 2 * half]
    if interleaved:
        pairs = torch.complex(rotary[..., 0::2], rotary[..., 1::2])
    else:
        pairs = torch.complex(rotary[..., :half], rotary[..., half:])
    rotated = pairs * torch.complex(cos, sin)[:, None]
    if interleaved:
        out = torch.stack((rotated.real, rotated.imag), dim=-1).flatten(-2)
    else:
        out = torch.cat((rotated.real, rotated.imag), dim=-1)
    return torch.cat((out, x[..., 2 * half:]), dim=-1)


# Sizes on both sides of the kernels' threshold for starting threads.
@pytest.mark.parametrize("shape", [(3, 5, 16), (4, 64, 1024), (1, 1, 7)])
def test_rms_norm_forward_backward(shape):
    width = shape[-1]
    x = torch.randn(shape) * 3
    gain = 1 + 0.3 * torch.randn(width)
    grad = torch.randn(shape)
    out, rstd = kernels.rms_norm_forward(x, gain, 1e-5, want_rstd=True)
    x64 = x.double().requires_grad_()
    gain64 = gain.double().requires_grad_()
    expected = rms_reference(x64, gain64, 1e-5)
    expected.backward(grad.double())
    assert_close(out.double(), expected.detach(), rtol=1e-5, atol=1e-5)
    assert_close(rstd.double(), torch.rsqrt(x.double().pow(2).mean(-1, keepdim=True) + 1e-5), rtol=1e-6, atol=0)
    grad_x, grad_gain = kernels.rms_norm_backward(grad, x, gain, rstd, True, True)
    assert_close(grad_x.double(), x64.grad, rtol=1e-4, atol=1e-5)
    assert_close(grad_gain.double(), gain64.grad, rtol=1e-4, atol=1e-4)


def test_rms_norm_backward_one_input():
    x, gain, grad = torch.randn(2, 8, 32), torch.randn(32), torch.randn(2, 8, 32)
    _, rstd = kernels.rms_norm_forward(x, gain, 1e-6, want_rstd=True)
    grad_x, grad_gain = kernels.rms_norm_backward(grad, x, gain, rstd, True, False)
    assert grad_gain is None
    full_x, full_gain = kernels.rms_norm_backward(grad, x, gain, rstd, True, True)
    assert torch.equal(grad_x, full_x)
    grad_x, grad_gain = kernels.rms_norm_backward(grad, x, gain, rstd, False, True)
    assert grad_x is None
    assert torch.equal(grad_gain, full_gain)


def test_rms_norm_forward_without_rstd():
    x, gain = torch.randn(4, 300), torch.randn(300)
    out, rstd = kernels.rms_norm_forward(x, gain, 1e-6, want_rstd=False)
    assert rstd is None
    assert torch.equal(out, kernels.rms_norm_forward(x, gain, 1e-6, want_rstd=True)[0])


@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("rotary_dim", [64, 32])
def test_rope_matches_complex_rotation(interleaved, rotary_dim):
    batch, heads, length, dim = 2, 3, 50, 64
    x = torch.randn(batch, heads, length, dim)
    angles = torch.rand(batch, length, rotary_dim // 2) * 20
    cos, sin = angles.cos(), angles.sin()
    out = kernels.rope(x, cos, sin, interleaved, inverse=False)
    expected = rope_reference(x.double(), cos.double(), sin.double(), interleaved)
    assert out.is_contiguous()
    assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)
    back = kernels.rope(out, cos, sin, interleaved, inverse=True)
    assert_close(back, x, rtol=1e-5, atol=1e-5)


def test_rope_strided_input_and_shared_angles():
    """A transposed view of a fused projection and angles broadcast over the batch."""
    batch, heads, length, dim = 3, 4, 33, 16
    fused = torch.randn(batch, length, heads * 2, dim)
    x = fused.transpose(1, 2)[:, :heads]  # (B, H, T, D), strided
    angles = torch.rand(1, length, dim // 2) * 5
    cos, sin = angles.cos(), angles.sin()
    out = kernels.rope(x, cos, sin, interleaved=False, inverse=False)
    expected = rope_reference(x.double(), cos.expand(batch, -1, -1).double(), sin.expand(batch, -1, -1).double(), False)
    assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)


@settings(max_examples=30, deadline=None)
@given(
    length=st.integers(1, 40), heads=st.integers(1, 4), half=st.integers(1, 16),
    interleaved=st.booleans(), seed=st.integers(0, 2**31 - 1),
)
def test_rope_preserves_pair_norms(length, heads, half, interleaved, seed):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(1, heads, length, 2 * half, generator=generator)
    angles = torch.randn(1, length, half, generator=generator) * 100
    out = kernels.rope(x, angles.cos(), angles.sin(), interleaved, inverse=False)
    # A rotation keeps every vector's length.
    assert_close(out.norm(dim=-1), x.norm(dim=-1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(7,), (4, 512, 300)])
def test_swiglu_forward_backward(shape):
    gate = torch.randn(shape) * 6
    up = torch.randn(shape)
    grad = torch.randn(shape)
    gate64 = gate.double().requires_grad_()
    up64 = up.double().requires_grad_()
    expected = F.silu(gate64) * up64
    expected.backward(grad.double())
    assert_close(kernels.swiglu_forward(gate, up).double(), expected.detach(), rtol=1e-5, atol=1e-6)
    grad_gate, grad_up = kernels.swiglu_backward(grad, gate, up, True, True)
    assert_close(grad_gate.double(), gate64.grad, rtol=1e-5, atol=1e-6)
    assert_close(grad_up.double(), up64.grad, rtol=1e-5, atol=1e-6)
    only_gate, none_up = kernels.swiglu_backward(grad, gate, up, True, False)
    assert none_up is None
    assert torch.equal(only_gate, grad_gate)
    none_gate, only_up = kernels.swiglu_backward(grad, gate, up, False, True)
    assert none_gate is None
    assert torch.equal(only_up, grad_up)


def test_swiglu_extreme_and_nan_inputs():
    gate = torch.tensor([-1000.0, -90.0, -20.0, 0.0, 20.0, 90.0, 1000.0, float("nan")])
    up = torch.ones_like(gate)
    out = kernels.swiglu_forward(gate, up)
    expected = F.silu(gate)
    assert_close(out[:-1], expected[:-1], rtol=1e-6, atol=1e-30)
    assert torch.isnan(out[-1])


# The modules take the same values with and without the kernels -------------


def run_with_and_without_kernels(monkeypatch, build_and_run):
    with_kernels = build_and_run()
    # What load() leaves behind when BLOCKLAB_KERNELS=0 or the build failed.
    monkeypatch.setattr(kernels, "_library", None)
    monkeypatch.setattr(kernels, "_loaded", True)
    assert not kernels.usable(torch.zeros(1))
    without = build_and_run()
    return with_kernels, without


def test_rmsnorm_module_paths_agree(monkeypatch):
    x = torch.randn(2, 9, 48, requires_grad=True)

    def run():
        torch.manual_seed(1)
        module = RMSNorm(dim=48, eps=1e-6)
        with torch.no_grad():
            module.weight.normal_()
        x.grad = None
        out = module(x)
        out.backward(torch.ones_like(out) * torch.arange(48.0))
        return out.detach(), x.grad.clone(), module.weight.grad.clone()

    for fused, plain in zip(*run_with_and_without_kernels(monkeypatch, run)):
        assert_close(fused, plain, rtol=1e-5, atol=1e-5)


def test_rotary_paths_agree(monkeypatch):
    x = torch.randn(2, 4, 20, 32, requires_grad=True)
    angles = torch.rand(2, 20, 16) * 10

    def run():
        x.grad = None
        out = apply_rotary(x, angles.cos(), angles.sin())
        out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(0)))
        return out.detach(), x.grad.clone()

    for fused, plain in zip(*run_with_and_without_kernels(monkeypatch, run)):
        assert_close(fused, plain, rtol=1e-5, atol=1e-5)


def test_swiglu_feedforward_paths_agree(monkeypatch):
    """3 x 11 x 160 hidden activations: enough elements for the kernel path."""
    x = torch.randn(3, 11, 24, requires_grad=True)

    def run():
        torch.manual_seed(2)
        module = FeedForward(dim=24, hidden_dim=160, activation="swiglu")
        x.grad = None
        out = module(x)
        out.sum().backward()
        return out.detach(), x.grad.clone(), module.gate.weight.grad.clone(), module.up.weight.grad.clone()

    for fused, plain in zip(*run_with_and_without_kernels(monkeypatch, run)):
        assert_close(fused, plain, rtol=1e-5, atol=1e-5)


# Building -----------------------------------------------------------------


def test_failed_build_falls_back_with_one_warning(monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(kernels, "_library", None)
    monkeypatch.setattr(kernels, "_loaded", False)
    monkeypatch.setenv("BLOCKLAB_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    with caplog.at_level(logging.WARNING, logger="blocklab.nn.kernels"):
        assert kernels.load() is None
        assert kernels.load() is None
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "BLOCKLAB_KERNELS=0" in warnings[0].getMessage()
    x = torch.randn(2, 3, 8)
    assert_close(RMSNorm(dim=8)(x).double(), rms_reference(x.double(), torch.ones(8, dtype=torch.float64), 1e-6))
    assert list(tmp_path.rglob("*.tmp")) == []


def test_environment_switch_disables(monkeypatch, tmp_path):
    monkeypatch.setattr(kernels, "_library", None)
    monkeypatch.setattr(kernels, "_loaded", False)
    monkeypatch.setenv("BLOCKLAB_CACHE", str(tmp_path))
    monkeypatch.setenv("BLOCKLAB_KERNELS", "0")
    assert kernels.load() is None
    assert not kernels.usable(torch.zeros(4))
    assert not (tmp_path / "kernels").exists()


def test_build_caches_library_file(monkeypatch, tmp_path):
    monkeypatch.setattr(kernels, "_library", None)
    monkeypatch.setattr(kernels, "_loaded", False)
    monkeypatch.setenv("BLOCKLAB_CACHE", str(tmp_path))
    assert kernels.load() is not None
    built = list((tmp_path / "kernels").glob("*.so"))
    assert len(built) == 1
    modified = built[0].stat().st_mtime_ns
    monkeypatch.setattr(kernels, "_loaded", False)
    assert kernels.load() is not None
    assert built[0].stat().st_mtime_ns == modified


@pytest.mark.parametrize("rows", [1, 3, 8])
@pytest.mark.parametrize("bias", [False, True])
def test_linear_rows_matches_float64(rows, bias):
    # 700 x 600 weights start threads; the tiny case runs on one.
    for out_features, in_features in ((700, 600), (5, 3)):
        x = torch.randn(rows, in_features)
        weight = torch.randn(out_features, in_features)
        offset = torch.randn(out_features) if bias else None
        expected = x.double() @ weight.double().T
        if bias:
            expected = expected + offset.double()
        assert_close(kernels.linear_rows(x, weight, offset).double(), expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("kv_heads,rotary_half,interleaved", [(4, 4, False), (2, 4, True), (1, 2, False)])
def test_attention_split_rotate_paths_agree(monkeypatch, kv_heads, rotary_half, interleaved):
    """Fused split-and-rotate against PyTorch operators: grouped heads, partial and interleaved RoPE."""
    x = torch.randn(2, 10, 32, requires_grad=True)
    angles = torch.rand(2, 10, rotary_half) * 10

    def run():
        torch.manual_seed(3)
        module = Attention(dim=32, num_heads=4, num_kv_heads=kv_heads, qkv_bias=True, rotary_interleaved=interleaved)
        x.grad = None
        out = module(x, rope=(angles.cos(), angles.sin()))
        out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(0)))
        return out.detach(), x.grad.clone(), module.qkv.weight.grad.clone(), module.qkv.bias.grad.clone()

    for fused, plain in zip(*run_with_and_without_kernels(monkeypatch, run)):
        assert_close(fused, plain, rtol=1e-5, atol=1e-5)


def test_split_rotate_unused_output_gets_zero_gradient():
    qkv = torch.randn(2, 5, 6 * 8, requires_grad=True)
    angles = torch.rand(2, 5, 4)
    q, k, v = split_rotate(qkv, angles.cos(), angles.sin(), heads=4, kv_heads=1, interleaved=False)
    (q.sum() + v.sum()).backward()
    grad = qkv.grad.view(2, 5, 6, 8)
    assert torch.count_nonzero(grad[:, :, 4]) == 0  # the key head
    assert torch.equal(grad[:, :, 5], torch.ones(2, 5, 8))  # the value head
    assert torch.count_nonzero(grad[:, :, :4]) > 0


@pytest.mark.parametrize("rows", [1, 4])
def test_linear_rows_swiglu_matches_float64(rows):
    for out_features, in_features in ((700, 600), (6, 5)):
        x = torch.randn(rows, in_features)
        gate = torch.randn(out_features, in_features) * 0.1
        up = torch.randn(out_features, in_features) * 0.1
        expected = F.silu(x.double() @ gate.double().T) * (x.double() @ up.double().T)
        assert_close(kernels.linear_rows_swiglu(x, gate, up).double(), expected, rtol=1e-5, atol=1e-5)


def test_damaged_cached_library_is_rebuilt(monkeypatch, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    monkeypatch.setattr(kernels, "_library", None)
    monkeypatch.setattr(kernels, "_loaded", False)
    monkeypatch.setenv("BLOCKLAB_CACHE", str(first))
    assert kernels.load() is not None
    (built,) = (first / "kernels").glob("*.so")
    # A truncated copy under the same name, as an interrupted copy leaves it.
    # The loaded file itself stays intact: truncating a mapped library would
    # crash this process.
    # Cut at 100 bytes, the dynamic loader rejects the file. Cut at half, with
    # intact headers, loading it would crash the process, so the digest must catch it.
    for keep in (100, built.stat().st_size // 2):
        damaged = second / "kernels" / built.name
        damaged.parent.mkdir(parents=True, exist_ok=True)
        damaged.write_bytes(built.read_bytes()[:keep])
        digest = first / "kernels" / (built.name + ".sha256")
        (second / "kernels" / digest.name).write_bytes(digest.read_bytes())
        monkeypatch.setattr(kernels, "_loaded", False)
        monkeypatch.setenv("BLOCKLAB_CACHE", str(second))
        assert kernels.load() is not None
        (rebuilt,) = (second / "kernels").glob("*.so")
        assert rebuilt.name == built.name
        assert rebuilt.stat().st_size == built.stat().st_size
        # The next case must not overwrite the library this process now has loaded.
        second = tmp_path / f"after-{keep}"


def test_compiler_with_arguments(monkeypatch, tmp_path):
    monkeypatch.setattr(kernels, "_library", None)
    monkeypatch.setattr(kernels, "_loaded", False)
    monkeypatch.setenv("BLOCKLAB_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "cc -g")
    assert kernels.load() is not None
