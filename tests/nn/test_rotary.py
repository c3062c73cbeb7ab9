"""RoPE: layouts, partial rotation, scalings, offset property and float32 angles.

Each scaling's inverse frequencies are checked twice: against a float64 closed
form written here from the published formulas, and against `transformers`'
``ROPE_INIT_FUNCTIONS`` built from a ``LlamaConfig`` (transformers 5.x keeps
the settings in a ``rope_parameters`` dict).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.testing import assert_close

import blocklab as bl
from blocklab.config import RopeScaling
from blocklab.nn import RotaryEmbedding, apply_rotary

THETA = 10000.0


# float64 references ---------------------------------------------------------


def plain_frequencies(dim: int, theta: float = THETA) -> torch.Tensor:
    """theta^(-2i/dim) for i < dim/2, in float64."""
    return torch.tensor([theta ** (-2 * i / dim) for i in range(dim // 2)], dtype=torch.float64)


def ntk_frequencies(dim: int, factor: float) -> torch.Tensor:
    # The base grows so the lowest frequency stretches by `factor`: theta * factor^(d/(d-2)).
    return plain_frequencies(dim, THETA * factor ** (dim / (dim - 2)))


def dynamic_frequencies(dim: int, factor: float, original: int, seq_len: int) -> torch.Tensor:
    length = max(seq_len, original)
    base = THETA * (factor * length / original - (factor - 1)) ** (dim / (dim - 2))
    return plain_frequencies(dim, base)


def yarn_reference(
    dim: int, factor: float, original: int, beta_fast: float = 32.0, beta_slow: float = 1.0,
    truncate: bool = True, mscale: float | None = None, mscale_all_dim: float | None = None,
) -> tuple[torch.Tensor, float]:
    """YaRN (Peng et al. 2023) as `transformers` defines it, in float64.

    Frequency i makes original * f_i / (2 pi) turns over the original length.
    Dimensions that turn more than beta_fast times keep f_i, those that turn
    fewer than beta_slow times use f_i / factor, and a ramp that is linear in
    the dimension index blends the two in between.
    """
    def index_for(turns: float) -> float:
        # Solve original * theta^(-2i/dim) / (2 pi) = turns for i, on the 0..dim scale.
        return dim * math.log(original / (turns * 2 * math.pi)) / (2 * math.log(THETA))

    low, high = index_for(beta_fast), index_for(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    plain = plain_frequencies(dim)
    frequencies = torch.empty_like(plain)
    for i in range(dim // 2):
        interpolated = min(max((i - low) / (high - low), 0.0), 1.0)
        frequencies[i] = plain[i] / factor * interpolated + plain[i] * (1 - interpolated)

    def temperature(weight: float) -> float:
        return 1.0 if factor <= 1 else 0.1 * weight * math.log(factor) + 1.0

    if mscale and mscale_all_dim:
        attention = temperature(mscale) / temperature(mscale_all_dim)
    else:
        attention = temperature(1.0)
    return frequencies, attention


def llama3_frequencies(dim: int, factor: float, original: int, low: float, high: float) -> torch.Tensor:
    """Llama 3.1: long wavelengths divided by factor, short kept, a linear blend between."""
    out = []
    for f in plain_frequencies(dim).tolist():
        wavelength = 2 * math.pi / f
        if wavelength < original / high:
            out.append(f)
        elif wavelength > original / low:
            out.append(f / factor)
        else:
            smooth = (original / wavelength - low) / (high - low)
            out.append((1 - smooth) * f / factor + smooth * f)
    return torch.tensor(out, dtype=torch.float64)


def rotate_reference(
    x: torch.Tensor, positions: torch.Tensor, frequencies: torch.Tensor, interleaved: bool,
    attention_factor: float = 1.0,
) -> torch.Tensor:
    """Rotate (B, H, T, D) by position * frequency in float64, one 2x2 rotation per pair."""
    x = x.double()
    out = x.clone()
    rotary = 2 * frequencies.numel()
    half = rotary // 2
    for i in range(half):
        first, second = (2 * i, 2 * i + 1) if interleaved else (i, i + half)
        angle = positions.double()[:, None, :] * frequencies[i]  # (B, 1, T)
        cos, sin = angle.cos() * attention_factor, angle.sin() * attention_factor
        out[..., first] = x[..., first] * cos - x[..., second] * sin
        out[..., second] = x[..., second] * cos + x[..., first] * sin
    return out


def rope(module: RotaryEmbedding, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    cos, sin = module(positions)
    return module.rotate(x, cos, sin)


# Layouts and partial rotation -----------------------------------------------


@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("head_dim,rotary_dim", [(16, 16), (16, 8), (12, 4)])
def test_rotation_closed_form(interleaved, head_dim, rotary_dim):
    module = RotaryEmbedding(dim=rotary_dim, interleaved=interleaved)
    x = torch.randn(2, 3, 10, head_dim)
    pos = torch.stack((torch.arange(10), torch.arange(5, 15)))
    expected = rotate_reference(x, pos, plain_frequencies(rotary_dim), interleaved)
    assert_close(rope(module, x, pos).double(), expected, rtol=1e-5, atol=1e-5)


def test_partial_rotation_passthrough():
    module = RotaryEmbedding(dim=4)
    x = torch.randn(1, 2, 6, 10)
    out = rope(module, x, torch.arange(6)[None])
    assert torch.equal(out[..., 4:], x[..., 4:])
    assert not torch.equal(out[..., :4], x[..., :4])


def test_layouts_are_permutations():
    # Interleaved pairs (2i, 2i+1) are split halves (i, i + D/2) after reordering.
    dim = 8
    order = torch.tensor([0, 2, 4, 6, 1, 3, 5, 7])
    x = torch.randn(1, 2, 5, dim)
    pos = torch.arange(5)[None]
    split = rope(RotaryEmbedding(dim=dim), x[..., order], pos)
    interleaved = rope(RotaryEmbedding(dim=dim, interleaved=True), x, pos)
    assert_close(split, interleaved[..., order])


def test_rotation_keeps_dtype():
    module = RotaryEmbedding(dim=8)
    x = torch.randn(1, 2, 5, 8, dtype=torch.bfloat16)
    out = rope(module, x, torch.arange(5)[None])
    assert out.dtype == torch.bfloat16
    expected = rotate_reference(x, torch.arange(5)[None], plain_frequencies(8), False)
    assert_close(out.double(), expected, rtol=1e-2, atol=1e-2)


def test_rejects_odd_dim():
    with pytest.raises(ValueError, match="RotaryEmbedding.dim"):
        RotaryEmbedding(dim=7)


# Relative-position property ---------------------------------------------------


ROTARY_QK = {layout: RotaryEmbedding(dim=16, interleaved=layout) for layout in (False, True)}


@settings(max_examples=40, deadline=None)
@given(
    query_pos=st.integers(0, 300), key_pos=st.integers(0, 300), shift=st.integers(0, 2000),
    interleaved=st.booleans(),
)
def test_score_depends_on_offset(query_pos, key_pos, shift, interleaved):
    module = ROTARY_QK[interleaved]
    generator = torch.Generator().manual_seed(query_pos * 1000 + key_pos)
    q = torch.randn(1, 1, 1, 16, generator=generator)
    k = torch.randn(1, 1, 1, 16, generator=generator)

    def score(m: int, n: int) -> torch.Tensor:
        rotated_q = rope(module, q, torch.tensor([[m]]))
        rotated_k = rope(module, k, torch.tensor([[n]]))
        return (rotated_q * rotated_k).sum()

    # float32 angles near 2300 rad carry about 2e-4 rad of rounding error.
    assert_close(score(query_pos + shift, key_pos + shift), score(query_pos, key_pos), rtol=0, atol=2e-3)


# Scalings: closed forms -----------------------------------------------------


def scaled(type_: str, dim: int = 16, **fields) -> RotaryEmbedding:
    return RotaryEmbedding(dim=dim, scaling=RopeScaling(type=type_, **fields))


@pytest.mark.parametrize("factor", [2.0, 8.0])
def test_linear_closed_form(factor):
    inv_freq, attention = scaled("linear", factor=factor).frequencies(torch.arange(4))
    assert_close(inv_freq.double(), plain_frequencies(16) / factor, rtol=1e-6, atol=0)
    assert attention == 1.0


@pytest.mark.parametrize("factor", [2.0, 8.0])
def test_ntk_closed_form(factor):
    inv_freq, attention = scaled("ntk", factor=factor).frequencies(torch.arange(4))
    assert_close(inv_freq.double(), ntk_frequencies(16, factor), rtol=1e-5, atol=0)
    assert attention == 1.0


@pytest.mark.parametrize("seq_len", [10, 64, 65, 200])
def test_dynamic_closed_form(seq_len):
    module = scaled("dynamic", factor=4.0, original_max_position_embeddings=64)
    inv_freq, attention = module.frequencies(torch.arange(seq_len)[None])
    assert_close(inv_freq.double(), dynamic_frequencies(16, 4.0, 64, seq_len), rtol=1e-5, atol=0)
    assert attention == 1.0


YARN_CASES = [
    dict(factor=4.0, original_max_position_embeddings=64),
    dict(factor=8.0, original_max_position_embeddings=2048),
    dict(factor=4.0, original_max_position_embeddings=256, truncate=False),
    dict(factor=4.0, original_max_position_embeddings=256, beta_fast=16.0, beta_slow=2.0),
    dict(factor=16.0, original_max_position_embeddings=512, mscale=0.707, mscale_all_dim=0.707),
    dict(factor=16.0, original_max_position_embeddings=512, mscale=1.0, mscale_all_dim=0.5),
]


@pytest.mark.parametrize("case", YARN_CASES)
def test_yarn_closed_form(case):
    inv_freq, attention = scaled("yarn", dim=32, **case).frequencies(torch.arange(4))
    expected, expected_attention = yarn_reference(32, **{
        "original" if k == "original_max_position_embeddings" else k: v for k, v in case.items()
    })
    assert_close(inv_freq.double(), expected, rtol=1e-5, atol=0)
    assert attention == pytest.approx(expected_attention, rel=1e-12)


def test_yarn_explicit_attention_factor():
    module = scaled("yarn", factor=4.0, original_max_position_embeddings=64, attention_factor=1.5)
    _, attention = module.frequencies(torch.arange(4))
    assert attention == 1.5


def test_yarn_attention_scales_cos_sin():
    module = scaled("yarn", factor=4.0, original_max_position_embeddings=64)
    x = torch.randn(1, 2, 7, 16)
    pos = torch.arange(7)[None]
    frequencies, attention = yarn_reference(16, 4.0, 64)
    expected = rotate_reference(x, pos, frequencies, False, attention)
    assert_close(rope(module, x, pos).double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("original", [64, 8192])
def test_llama3_closed_form(original):
    module = scaled(
        "llama3", dim=64, factor=8.0, original_max_position_embeddings=original,
        low_freq_factor=1.0, high_freq_factor=4.0,
    )
    inv_freq, attention = module.frequencies(torch.arange(4))
    expected = llama3_frequencies(64, 8.0, original, 1.0, 4.0)
    assert_close(inv_freq.double(), expected, rtol=1e-5, atol=0)
    assert attention == 1.0


# Scalings: transformers' ROPE_INIT_FUNCTIONS ---------------------------------


def transformers_frequencies(
    rope_parameters: dict, head_dim: int = 32, max_positions: int = 64, seq_len: int | None = None,
    partial: float = 1.0,
) -> tuple[torch.Tensor, float]:
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    parameters = {"rope_theta": THETA, **rope_parameters}
    if partial != 1.0:
        parameters["partial_rotary_factor"] = partial
    config = LlamaConfig(
        hidden_size=2 * head_dim, num_attention_heads=2, head_dim=head_dim,
        max_position_embeddings=max_positions, rope_parameters=parameters,
    )
    init = ROPE_INIT_FUNCTIONS[parameters["rope_type"]]
    return init(config, "cpu", seq_len=seq_len)


@pytest.mark.parametrize("partial", [1.0, 0.5])
def test_linear_transformers(partial):
    ours, attention = scaled("linear", dim=int(32 * partial), factor=4.0).frequencies(torch.arange(2))
    theirs, their_attention = transformers_frequencies(
        {"rope_type": "linear", "factor": 4.0}, partial=partial
    )
    assert_close(ours, theirs)
    assert attention == their_attention


@pytest.mark.parametrize("seq_len", [32, 64, 100, 500])
def test_dynamic_transformers(seq_len):
    module = scaled("dynamic", dim=32, factor=4.0, original_max_position_embeddings=64)
    ours, attention = module.frequencies(torch.arange(seq_len)[None])
    theirs, their_attention = transformers_frequencies(
        {"rope_type": "dynamic", "factor": 4.0}, max_positions=64, seq_len=seq_len
    )
    assert_close(ours, theirs)
    assert attention == their_attention


@pytest.mark.parametrize("factor", [2.0, 4.0])
def test_ntk_transformers(factor):
    # transformers has no static NTK entry; its dynamic NTK with factor 1 at a
    # length of factor * M uses the base theta * factor^(d/(d-2)), the same base.
    ours, _ = scaled("ntk", dim=32, factor=factor).frequencies(torch.arange(2))
    theirs, _ = transformers_frequencies(
        {"rope_type": "dynamic", "factor": 1.0}, max_positions=64, seq_len=int(factor * 64)
    )
    assert_close(ours, theirs)


@pytest.mark.parametrize("case", YARN_CASES)
def test_yarn_transformers(case):
    ours, attention = scaled("yarn", dim=32, **case).frequencies(torch.arange(2))
    parameters = {"rope_type": "yarn", **case}
    max_positions = int(case["factor"] * case["original_max_position_embeddings"])
    theirs, their_attention = transformers_frequencies(parameters, max_positions=max_positions)
    assert_close(ours, theirs)
    assert attention == pytest.approx(their_attention, rel=1e-12)


@pytest.mark.parametrize("original", [64, 8192])
def test_llama3_transformers(original):
    fields = dict(factor=8.0, original_max_position_embeddings=original,
                  low_freq_factor=1.0, high_freq_factor=4.0)
    ours, attention = scaled("llama3", dim=32, **fields).frequencies(torch.arange(2))
    theirs, their_attention = transformers_frequencies(
        {"rope_type": "llama3", **fields}, max_positions=8 * original
    )
    assert_close(ours, theirs)
    assert attention == their_attention


# Scaling properties ---------------------------------------------------------


ALL_SCALINGS = [
    dict(type="linear"),
    dict(type="ntk"),
    dict(type="dynamic", original_max_position_embeddings=16),
    dict(type="yarn", original_max_position_embeddings=16),
    dict(type="llama3", original_max_position_embeddings=16),
]


@pytest.mark.parametrize("fields", ALL_SCALINGS, ids=lambda f: f["type"])
def test_factor_one_is_plain(fields):
    module = RotaryEmbedding(dim=16, scaling=RopeScaling(factor=1.0, **fields))
    plain = RotaryEmbedding(dim=16)
    # Dynamic NTK as `transformers` defines it rescales past the trained length
    # even at factor 1 (its scale is factor * L / M - factor + 1 = L / M), so
    # the comparison stops at that length, 16.
    pos = torch.arange(16)[None] if fields["type"] == "dynamic" else torch.arange(40)[None]
    cos, sin = module(pos)
    plain_cos, plain_sin = plain(pos)
    assert_close(cos, plain_cos)
    assert_close(sin, plain_sin)


@pytest.mark.parametrize("factor", [2.0, 4.0, 3.5])
def test_linear_is_position_over_factor(factor):
    linear = scaled("linear", factor=factor)
    plain = RotaryEmbedding(dim=16)
    pos = torch.arange(0, 200, 7)[None]
    assert_close(linear.angles(pos), plain.angles(pos.float() / factor))
    x = torch.randn(1, 2, pos.shape[1], 16)
    # Dividing the frequency or the position rounds differently in float32.
    assert_close(rope(linear, x, pos), rope(plain, x, pos.float() / factor), rtol=1e-5, atol=1e-4)


def test_dynamic_plain_within_length():
    dynamic = scaled("dynamic", factor=4.0, original_max_position_embeddings=32)
    plain = RotaryEmbedding(dim=16)
    pos = torch.arange(32)[None]
    assert torch.equal(dynamic(pos)[0], plain(pos)[0])
    assert torch.equal(dynamic(pos)[1], plain(pos)[1])


def test_dynamic_changes_past_length():
    dynamic = scaled("dynamic", factor=4.0, original_max_position_embeddings=32)
    plain = RotaryEmbedding(dim=16)
    pos = torch.arange(33)[None]
    assert not torch.equal(dynamic(pos)[0], plain(pos)[0])


def test_dynamic_keeps_no_state():
    dynamic = scaled("dynamic", factor=4.0, original_max_position_embeddings=32)
    fresh = scaled("dynamic", factor=4.0, original_max_position_embeddings=32)
    short = torch.arange(10)[None]
    dynamic(torch.arange(500)[None])
    after_long = dynamic(short)
    alone = fresh(short)
    assert torch.equal(after_long[0], alone[0])
    assert torch.equal(after_long[1], alone[1])


# float32 angles ---------------------------------------------------------------


def test_angles_float32_under_autocast():
    module = RotaryEmbedding(dim=16)
    pos = torch.arange(300)[None]
    expected = module.angles(pos)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        angles = module.angles(pos)
        cos, sin = module(pos)
    assert angles.dtype == torch.float32
    assert cos.dtype == torch.float32
    assert sin.dtype == torch.float32
    assert torch.equal(angles, expected)


def test_angles_float32_bf16_module():
    module = RotaryEmbedding(dim=16).to(torch.bfloat16)
    pos = torch.arange(300)[None]
    angles = module.angles(pos)
    assert angles.dtype == torch.float32
    expected = pos.double()[..., None] * plain_frequencies(16)
    assert_close(angles.double(), expected, rtol=1e-6, atol=1e-4)


def test_angles_float32_bf16_model():
    config = bl.ModelConfig(vocab_size=32, d_model=32, n_layers=1, n_heads=2, position="rope")
    model = bl.Transformer(config).to(torch.bfloat16)
    pos = torch.arange(300)[None]
    angles = model.rotary.angles(pos)
    cos, _ = model.rotary(pos)
    assert angles.dtype == torch.float32
    assert cos.dtype == torch.float32
    expected = pos.double()[..., None] * plain_frequencies(16)
    assert_close(angles.double(), expected, rtol=1e-6, atol=1e-4)


def test_apply_rotary_function():
    # The free function matches the module method for both layouts.
    x = torch.randn(1, 2, 5, 8)
    pos = torch.arange(5)[None]
    for interleaved in (False, True):
        module = RotaryEmbedding(dim=8, interleaved=interleaved)
        cos, sin = module(pos)
        assert torch.equal(apply_rotary(x, cos, sin, interleaved), module.rotate(x, cos, sin))


@pytest.mark.parametrize("fields", [
    dict(type="ntk", factor=4.0),
    dict(type="dynamic", factor=4.0, original_max_position_embeddings=8),
], ids=["ntk", "dynamic"])
def test_ntk_two_dims_is_plain(fields):
    # With two rotary dimensions the only frequency is theta^0 = 1 for any base.
    module = RotaryEmbedding(dim=2, scaling=RopeScaling(**fields))
    pos = torch.arange(50)[None]
    assert torch.equal(module.angles(pos), RotaryEmbedding(dim=2).angles(pos))
