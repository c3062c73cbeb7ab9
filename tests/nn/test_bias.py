"""Score biases: learned relative a_{i-j}, T5 buckets and ALiBi.

References are written out in float64 Python, and the T5 buckets are also
compared with `transformers`' ``T5Attention._relative_position_bucket``.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.testing import assert_close

from blocklab.nn import ALiBi, RelativePositionBias, T5RelativePositionBias, alibi_slopes


def positions(batch: int, length: int, start: int = 0) -> torch.Tensor:
    return torch.arange(start, start + length).expand(batch, length)


# Learned relative bias ------------------------------------------------------


def test_relative_clipped_offsets():
    heads, max_distance, length = 3, 4, 11
    module = RelativePositionBias(num_heads=heads, max_distance=max_distance)
    torch.nn.init.normal_(module.weight)
    bias = module(positions(2, length), positions(2, length))
    assert bias.shape == (2, heads, length, length)
    assert bias.dtype == torch.float32

    expected = torch.empty(heads, length, length)
    for i in range(length):
        for j in range(length):
            offset = max(-max_distance, min(max_distance, i - j))
            expected[:, i, j] = module.weight[:, offset + max_distance]
    assert_close(bias[0], expected)
    assert_close(bias[1], expected)


def test_relative_far_offsets_share():
    module = RelativePositionBias(num_heads=2, max_distance=3)
    torch.nn.init.normal_(module.weight)
    bias = module(torch.tensor([[0, 50]]), torch.tensor([[0, 50]]))
    assert_close(bias[0, :, 1, 0], module.weight[:, 6])  # i - j = +50 -> +3
    assert_close(bias[0, :, 0, 1], module.weight[:, 0])  # i - j = -50 -> -3


# T5 buckets -----------------------------------------------------------------


def t5_bucket_reference(relative: int, bidirectional: bool, num_buckets: int, max_distance: int) -> int:
    """Bucket of one key-minus-query offset, following Raffel et al. 2020 in float64."""
    offset = 0
    if bidirectional:
        num_buckets //= 2
        if relative > 0:
            offset = num_buckets
        distance = abs(relative)
    else:
        distance = max(-relative, 0)
    exact = num_buckets // 2
    if distance < exact:
        return offset + distance
    spread = math.log(distance / exact) / math.log(max_distance / exact) * (num_buckets - exact)
    return offset + min(exact + int(spread), num_buckets - 1)


BUCKET_SETTINGS = [(32, 128), (16, 64), (8, 20), (10, 50)]


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("num_buckets,max_distance", BUCKET_SETTINGS)
def test_t5_bucket_reference(bidirectional, num_buckets, max_distance):
    relative = torch.arange(-400, 401)
    buckets = T5RelativePositionBias.bucket(relative, bidirectional, num_buckets, max_distance)
    expected = torch.tensor([
        t5_bucket_reference(int(r), bidirectional, num_buckets, max_distance) for r in relative
    ])
    assert buckets.dtype == torch.long
    assert torch.equal(buckets, expected)


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("num_buckets,max_distance", BUCKET_SETTINGS)
def test_t5_bucket_transformers(bidirectional, num_buckets, max_distance):
    from transformers.models.t5.modeling_t5 import T5Attention

    relative = torch.arange(-400, 401)[None].expand(3, -1)
    ours = T5RelativePositionBias.bucket(relative, bidirectional, num_buckets, max_distance)
    theirs = T5Attention._relative_position_bucket(
        relative, bidirectional=bidirectional, num_buckets=num_buckets, max_distance=max_distance
    )
    assert torch.equal(ours, theirs)


def test_t5_bucket_large_distances_capped():
    far = torch.tensor([-10_000, -129, -128, 128, 10_000])
    causal = T5RelativePositionBias.bucket(far, False, 32, 128)
    both = T5RelativePositionBias.bucket(far, True, 32, 128)
    assert causal.tolist() == [31, 31, 31, 0, 0]
    assert both.tolist() == [15, 15, 15, 31, 31]


def test_t5_bucket_exact_range():
    # Half of each side's buckets hold the distances 0 .. exact - 1 one to one.
    near = torch.arange(-7, 8)
    both = T5RelativePositionBias.bucket(near, True, 32, 128)
    causal = T5RelativePositionBias.bucket(-torch.arange(16), False, 32, 128)
    assert both.tolist() == [7, 6, 5, 4, 3, 2, 1, 0, 17, 18, 19, 20, 21, 22, 23]
    assert causal.tolist() == list(range(16))


@pytest.mark.parametrize("bidirectional", [True, False])
def test_t5_bias_lookup(bidirectional):
    module = T5RelativePositionBias(
        num_heads=3, bidirectional=bidirectional, num_buckets=8, max_distance=16
    )
    torch.nn.init.normal_(module.weight)
    length = 20
    bias = module(positions(1, length), positions(1, length))
    assert bias.shape == (1, 3, length, length)
    for i in range(length):
        for j in range(length):
            bucket = t5_bucket_reference(j - i, bidirectional, 8, 16)
            assert_close(bias[0, :, i, j], module.weight[bucket])


# ALiBi ----------------------------------------------------------------------


def alibi_slopes_reference(num_heads: int) -> torch.Tensor:
    """Slopes of Press et al. 2022 in float64.

    For a power of two n the slopes are 2^(-8h/n), h = 1..n. Otherwise, with p
    the largest power of two below n, the p slopes for p heads come first, then
    the odd-numbered slopes of 2p heads, 2^(-8(2h-1)/(2p)), for h = 1..n-p.
    """
    p = 1 << (num_heads.bit_length() - 1)
    slopes = [2.0 ** (-8.0 * h / p) for h in range(1, p + 1)]
    slopes += [2.0 ** (-8.0 * (2 * h - 1) / (2 * p)) for h in range(1, num_heads - p + 1)]
    return torch.tensor(slopes, dtype=torch.float64)


@pytest.mark.parametrize("num_heads", [1, 2, 3, 4, 6, 8, 12, 16, 20, 24, 32, 33])
def test_alibi_slopes_formula(num_heads):
    slopes = alibi_slopes(num_heads)
    assert slopes.shape == (num_heads,)
    assert_close(slopes, alibi_slopes_reference(num_heads), rtol=1e-15, atol=0)


def test_alibi_slopes_eight_heads():
    expected = torch.tensor([1 / 2**k for k in range(1, 9)], dtype=torch.float64)
    assert_close(alibi_slopes(8), expected, rtol=0, atol=0)


def test_alibi_slopes_six_heads():
    # Four heads give 2^-2, 2^-4, 2^-6, 2^-8; eight give 2^-1 .. 2^-8, of which
    # the odd-numbered 2^-1 and 2^-3 fill the last two heads.
    expected = torch.tensor([2**-2, 2**-4, 2**-6, 2**-8, 2**-1, 2**-3], dtype=torch.float64)
    assert_close(alibi_slopes(6), expected, rtol=0, atol=0)


@pytest.mark.parametrize("num_heads", [4, 6, 12, 20])
def test_alibi_module_slopes(num_heads):
    module = ALiBi(num_heads=num_heads)
    assert module.slopes.dtype == torch.float32
    assert_close(module.slopes.double(), alibi_slopes_reference(num_heads), rtol=1e-7, atol=0)


@pytest.mark.parametrize("num_heads", [4, 6])
def test_alibi_bias_linear(num_heads):
    length = 9
    bias = ALiBi(num_heads=num_heads)(positions(2, length), positions(2, length))
    assert bias.shape == (2, num_heads, length, length)
    distance = (torch.arange(length)[:, None] - torch.arange(length)[None, :]).abs().double()
    expected = -alibi_slopes_reference(num_heads)[:, None, None] * distance
    assert_close(bias[1].double(), expected, rtol=1e-6, atol=0)


def test_alibi_slopes_survive_half():
    module = ALiBi(num_heads=6).half()
    assert module.slopes.dtype == torch.float32
    assert_close(module.slopes.double(), alibi_slopes_reference(6), rtol=1e-7, atol=0)


# Shift invariance -----------------------------------------------------------


def bias_modules() -> list[torch.nn.Module]:
    relative = RelativePositionBias(num_heads=2, max_distance=5)
    t5_both = T5RelativePositionBias(num_heads=2, bidirectional=True, num_buckets=8, max_distance=20)
    t5_causal = T5RelativePositionBias(num_heads=2, bidirectional=False, num_buckets=8, max_distance=20)
    modules = [relative, t5_both, t5_causal, ALiBi(num_heads=3)]
    for module in modules:
        for parameter in module.parameters():
            torch.nn.init.normal_(parameter)
    return modules


MODULES = bias_modules()


@settings(max_examples=25, deadline=None)
@given(shift=st.integers(0, 5000), length=st.integers(1, 12))
def test_bias_shift_invariant(shift, length):
    query = positions(1, length)
    key = positions(1, length + 3)
    for module in MODULES:
        before = module(query, key)
        after = module(query + shift, key + shift)
        assert_close(after, before, rtol=0, atol=0)


@pytest.mark.parametrize(
    "bidirectional,num_buckets,max_distance",
    [(True, 3, 128), (False, 1, 128), (True, 8, 2), (False, 8, 4)],
)
def test_t5_rejects_degenerate_buckets(bidirectional, num_buckets, max_distance):
    with pytest.raises(ValueError, match="T5RelativePositionBias: invalid num_buckets"):
        T5RelativePositionBias(
            num_heads=2, bidirectional=bidirectional, num_buckets=num_buckets,
            max_distance=max_distance,
        )


@pytest.mark.parametrize("bidirectional,num_buckets", [(True, 4), (False, 2)])
def test_t5_smallest_buckets(bidirectional, num_buckets):
    module = T5RelativePositionBias(
        num_heads=2, bidirectional=bidirectional, num_buckets=num_buckets, max_distance=2
    )
    torch.nn.init.normal_(module.weight)
    bias = module(positions(1, 6), positions(1, 6))
    assert torch.isfinite(bias).all()
    for i in range(6):
        for j in range(6):
            bucket = t5_bucket_reference(j - i, bidirectional, num_buckets, 2)
            assert_close(bias[0, :, i, j], module.weight[bucket])
