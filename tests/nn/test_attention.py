"""Attention against torch.nn.MultiheadAttention and a float64 reference that
repeats key/value heads by hand; masks, empty rows and reduced precision."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from blocklab.nn import ALiBi, Attention, RotaryEmbedding, apply_rotary

C = 32


def torch_attention(ours: Attention) -> torch.nn.MultiheadAttention:
    """A torch.nn.MultiheadAttention with blocklab's weights copied in."""
    theirs = torch.nn.MultiheadAttention(C, ours.num_heads, batch_first=True, bias=True)
    with torch.no_grad():
        theirs.in_proj_weight.copy_(ours.qkv.weight)
        theirs.in_proj_bias.copy_(ours.qkv.bias)
        theirs.out_proj.weight.copy_(ours.out.weight)
        theirs.out_proj.bias.copy_(ours.out.bias)
    return theirs.eval()


def with_biases(module: Attention) -> Attention:
    with torch.no_grad():
        module.qkv.bias.normal_()
        module.out.bias.normal_()
    return module.eval()


def future_mask(length: int) -> torch.Tensor:
    """True where torch.nn.MultiheadAttention must not look: keys after the query."""
    return torch.ones(length, length, dtype=torch.bool).triu(1)


PADDING = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])


@pytest.mark.parametrize("masked", [False, True])
def test_bidirectional_torch(masked):
    ours = with_biases(Attention(dim=C, num_heads=4, qkv_bias=True, out_bias=True))
    theirs = torch_attention(ours)
    x = torch.randn(3, 6, C)
    key_mask = PADDING if masked else None
    out = ours(x, causal=False, key_mask=key_mask)
    padding = None if key_mask is None else ~key_mask.bool()
    expected, _ = theirs(x, x, x, key_padding_mask=padding, need_weights=False)
    assert_close(out, expected)


def test_causal_torch():
    ours = with_biases(Attention(dim=C, num_heads=4, qkv_bias=True, out_bias=True))
    theirs = torch_attention(ours)
    x = torch.randn(2, 7, C)
    expected, _ = theirs(x, x, x, attn_mask=future_mask(7), need_weights=False)
    assert_close(ours(x, causal=True), expected)


def test_causal_padded_torch():
    ours = with_biases(Attention(dim=C, num_heads=4, qkv_bias=True, out_bias=True))
    theirs = torch_attention(ours)
    x = torch.randn(3, 6, C)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    out = ours(x, causal=True, key_mask=mask)
    expected, _ = theirs(
        x, x, x, attn_mask=future_mask(6), key_padding_mask=~mask.bool(), need_weights=False
    )
    # Every query here sees at least one real key, so all rows compare.
    assert_close(out, expected)


# Grouped-query attention ------------------------------------------------------


def reference_attention(
    module: Attention, x: torch.Tensor, causal: bool, key_mask: torch.Tensor | None = None,
    bias: torch.Tensor | None = None, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """float64 attention where query head h reads key/value head h // (H / K)."""
    batch, length, _ = x.shape
    heads, kv_heads, dim = module.num_heads, module.num_kv_heads, module.head_dim
    projected = x.double() @ module.qkv.weight.double().T
    if module.qkv.bias is not None:
        projected = projected + module.qkv.bias.double()
    q, k, v = projected.split((heads * dim, kv_heads * dim, kv_heads * dim), dim=-1)
    q = q.view(batch, length, heads, dim).transpose(1, 2)
    k = k.view(batch, length, kv_heads, dim).transpose(1, 2)
    v = v.view(batch, length, kv_heads, dim).transpose(1, 2)
    if rope is not None:
        cos, sin = (t.double() for t in rope)
        q = apply_rotary(q, cos, sin, module.rotary_interleaved)
        k = apply_rotary(k, cos, sin, module.rotary_interleaved)
    group = heads // kv_heads
    source = torch.tensor([h // group for h in range(heads)])
    k, v = k[:, source], v[:, source]  # (B, H, S, D)

    scale = module.scale if module.scale is not None else dim**-0.5
    scores = q @ k.transpose(-1, -2) * scale
    if bias is not None:
        scores = scores + bias.double()
    visible = torch.ones(batch, 1, length, length, dtype=torch.bool)
    if causal:
        visible &= torch.ones(length, length, dtype=torch.bool).tril()
    if key_mask is not None:
        visible &= key_mask.bool()[:, None, None, :]
    scores = scores.masked_fill(~visible, float("-inf"))
    has_key = visible.any(-1, keepdim=True)
    probs = torch.where(has_key, scores.softmax(-1), 0.0)
    out = (probs @ v).transpose(1, 2).reshape(batch, length, heads * dim)
    out = out @ module.out.weight.double().T
    if module.out.bias is not None:
        out = out + module.out.bias.double()
    return out


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_grouped_query_reference(kv_heads, causal, masked):
    module = Attention(dim=C, num_heads=4, num_kv_heads=kv_heads, qkv_bias=True).eval()
    assert module.qkv.weight.shape == ((4 + 2 * kv_heads) * 8, C)
    x = torch.randn(3, 6, C)
    key_mask = PADDING if masked else None
    out = module(x, causal=causal, key_mask=key_mask)
    expected = reference_attention(module, x, causal, key_mask)
    assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kv_heads", [2, 1])
def test_grouped_query_bias_rope(kv_heads):
    module = Attention(dim=C, num_heads=4, num_kv_heads=kv_heads, rotary_interleaved=True).eval()
    x = torch.randn(2, 6, C)
    pos = torch.arange(6).expand(2, 6)
    bias = ALiBi(num_heads=4)(pos, pos)
    rope = RotaryEmbedding(dim=8, interleaved=True)(pos)
    out = module(x, causal=True, bias=bias, rope=rope)
    expected = reference_attention(module, x, True, bias=bias, rope=rope)
    assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kv_heads", [2, 1])
def test_query_head_reads_its_group(kv_heads):
    # Change only the value weights of kv head 0: exactly the query heads
    # 0 .. H/K - 1 change. With an identity output projection, head h owns
    # output columns h*D .. (h+1)*D - 1.
    heads, dim = 4, 8
    module = Attention(dim=C, num_heads=heads, num_kv_heads=kv_heads).eval()
    with torch.no_grad():
        module.out.weight.copy_(torch.eye(C))
    x = torch.randn(2, 5, C)
    before = module(x, causal=False)
    value_rows = slice((heads + kv_heads) * dim, (heads + kv_heads + 1) * dim)
    with torch.no_grad():
        module.qkv.weight[value_rows] += torch.randn(dim, C)
    after = module(x, causal=False)
    group = heads // kv_heads
    for head in range(heads):
        columns = slice(head * dim, (head + 1) * dim)
        changed = not torch.equal(before[..., columns], after[..., columns])
        assert changed == (head < group), f"query head {head}"


def test_rejects_kv_heads():
    with pytest.raises(ValueError, match="Attention.num_kv_heads: invalid value 3"):
        Attention(dim=C, num_heads=4, num_kv_heads=3)


def test_rejects_head_split():
    with pytest.raises(ValueError, match="Attention.num_heads: invalid value 5"):
        Attention(dim=C, num_heads=5)


def test_explicit_head_dim():
    module = Attention(dim=C, num_heads=5, head_dim=4).eval()
    x = torch.randn(1, 3, C)
    out = module(x, causal=True)
    assert out.shape == (1, 3, C)
    assert_close(out.double(), reference_attention(module, x, True), rtol=1e-5, atol=1e-5)


# Causality ----------------------------------------------------------------------


@pytest.mark.parametrize("use_bias", [False, True])
def test_future_tokens_hidden(use_bias):
    module = Attention(dim=C, num_heads=4, num_kv_heads=2).eval()
    x = torch.randn(1, 8, C)
    pos = torch.arange(8)[None]
    bias = ALiBi(num_heads=4)(pos, pos) if use_bias else None
    before = module(x, causal=True, bias=bias)
    for t in range(1, 8):
        changed = x.clone()
        changed[:, t:] = torch.randn(1, 8 - t, C)
        after = module(changed, causal=True, bias=bias)
        assert_close(after[:, :t], before[:, :t], rtol=0, atol=1e-6)


# Empty rows and reduced precision -----------------------------------------------


def empty_row_setup(dtype: torch.dtype, use_bias: bool):
    module = Attention(dim=C, num_heads=4, num_kv_heads=2).to(dtype).train()
    x = torch.randn(2, 5, C, dtype=dtype, requires_grad=True)
    # Left padding: in a causal model query 0 and 1 of row 1 see only padding.
    key_mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    pos = (key_mask.cumsum(-1) - 1).clamp(min=0)
    bias = ALiBi(num_heads=4)(pos, pos) if use_bias else None
    return module, x, key_mask, bias


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("use_bias", [False, True])
def test_empty_rows_zero(dtype, use_bias):
    module, x, key_mask, bias = empty_row_setup(dtype, use_bias)
    out = module(x, causal=True, key_mask=key_mask, bias=bias)
    assert out.dtype == dtype
    assert torch.equal(out[1, :2], torch.zeros(2, C, dtype=dtype))
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("use_bias", [False, True])
def test_empty_rows_finite_grad(dtype, use_bias):
    module, x, key_mask, bias = empty_row_setup(dtype, use_bias)
    out = module(x, causal=True, key_mask=key_mask, bias=bias)
    out.float().pow(2).sum().backward()
    assert torch.isfinite(x.grad).all()
    for name, parameter in module.named_parameters():
        assert torch.isfinite(parameter.grad).all(), name


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("use_bias", [False, True])
def test_reduced_precision_close(dtype, use_bias):
    module, x, key_mask, bias = empty_row_setup(dtype, use_bias)
    out = module(x, causal=True, key_mask=key_mask, bias=bias)
    module32 = module.float()
    expected = module32(x.detach().float(), causal=True, key_mask=key_mask, bias=bias)
    tolerance = 1e-2 if dtype == torch.float16 else 4e-2
    assert_close(out.float(), expected, rtol=tolerance, atol=tolerance)


def test_long_alibi_half_finite():
    # ALiBi at distance 4000 reaches -2000, far beyond what half-precision
    # scores can absorb without losing the small differences between keys.
    module = Attention(dim=C, num_heads=4).half().eval()
    x = torch.randn(1, 6, C).half()
    pos = torch.tensor([[0, 1000, 2000, 3000, 3500, 4000]])
    bias = ALiBi(num_heads=4)(pos, pos)
    out = module(x, causal=True, bias=bias)
    expected = reference_attention(module, x, True, bias=bias)
    assert torch.isfinite(out).all()
    assert_close(out.double(), expected, rtol=1e-2, atol=1e-2)
