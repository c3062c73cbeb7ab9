"""Rotary position embedding (RoPE, Su et al. 2021) and its context-extension scalings.

RoPE rotates each pair of query/key dimensions by the angle pos * theta^(-2i/d),
so the score of a query at m and a key at n depends on m - n alone.

Every scaling is a function with one signature, registered in ``SCALINGS``:

    scaling_fn(dim, theta, scaling, seq_len) -> (inv_freq, attention_factor)

where ``inv_freq`` is the float32 (dim/2,) frequency vector and
``attention_factor`` multiplies cos and sin (only YaRN sets it). The formulas
follow `transformers`' ``modeling_rope_utils`` so that checkpoints trained
with it load to parity.

Shapes: B batch, H heads, T length, D head width, R rotary width (D or less).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from blocklab.config import RopeScaling
from blocklab.nn import kernels


def inverse_frequencies(dim: int, theta: float) -> torch.Tensor:
    """Return theta^(-2i/dim) for i < dim/2 as float32, in `transformers`' operation order."""
    exponent = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim
    return 1.0 / (theta**exponent)


def _linear(dim: int, theta: float, scaling: RopeScaling, seq_len: int) -> tuple[torch.Tensor, float]:
    # Position interpolation: angle(p) = p / factor * inv_freq.
    return inverse_frequencies(dim, theta) / scaling.factor, 1.0


def _ntk(dim: int, theta: float, scaling: RopeScaling, seq_len: int) -> tuple[torch.Tensor, float]:
    # NTK-aware: raise the base so the lowest frequency stretches by `factor`
    # while the highest stays put.
    if dim == 2:
        # The only frequency is theta^0 = 1 for every base, and d/(d-2) is undefined.
        return inverse_frequencies(dim, theta), 1.0
    base = theta * scaling.factor ** (dim / (dim - 2))
    return inverse_frequencies(dim, base), 1.0


def _dynamic(dim: int, theta: float, scaling: RopeScaling, seq_len: int) -> tuple[torch.Tensor, float]:
    # NTK base chosen from the current length; identical to plain RoPE up to
    # the trained length. Computed from seq_len on every call, so no state.
    # NOTE: past the trained length this rescales even at factor 1 (the scale is
    # then L / original), as transformers' "dynamic" does.
    if dim == 2:
        return inverse_frequencies(dim, theta), 1.0  # as in _ntk: one frequency, always 1
    original = scaling.original_max_position_embeddings
    length = max(seq_len, original)
    base = theta * ((scaling.factor * length / original) - (scaling.factor - 1)) ** (dim / (dim - 2))
    return inverse_frequencies(dim, base), 1.0


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    """Return YaRN's attention temperature term 0.1 * mscale * ln(factor) + 1 (1 at factor <= 1)."""
    if factor <= 1:
        return 1.0
    return 0.1 * mscale * math.log(factor) + 1.0


def _yarn(dim: int, theta: float, scaling: RopeScaling, seq_len: int) -> tuple[torch.Tensor, float]:
    factor = scaling.factor
    original = scaling.original_max_position_embeddings
    attention_factor = scaling.attention_factor
    if attention_factor is None:
        if scaling.mscale and scaling.mscale_all_dim:
            attention_factor = yarn_mscale(factor, scaling.mscale) / yarn_mscale(factor, scaling.mscale_all_dim)
        else:
            attention_factor = yarn_mscale(factor)

    # The dimension whose wavelength makes `rotations` turns over the original length.
    def dimension_for(rotations: float) -> float:
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low = dimension_for(scaling.beta_fast)
    high = dimension_for(scaling.beta_slow)
    if scaling.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # avoids a zero-width ramp

    # Dimensions below `low` keep their frequency (extrapolate), above `high`
    # are divided by `factor` (interpolate), with a linear ramp between.
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    extrapolation_weight = 1 - ramp
    powers = theta ** (torch.arange(0, dim, 2).float() / dim)
    inv_freq = (1.0 / (factor * powers)) * (1 - extrapolation_weight) + (1.0 / powers) * extrapolation_weight
    return inv_freq, float(attention_factor)


def _llama3(dim: int, theta: float, scaling: RopeScaling, seq_len: int) -> tuple[torch.Tensor, float]:
    inv_freq = inverse_frequencies(dim, theta)
    factor = scaling.factor
    original = scaling.original_max_position_embeddings
    low_wavelen = original / scaling.low_freq_factor
    high_wavelen = original / scaling.high_freq_factor

    # Long wavelengths are interpolated by `factor`, short ones kept, and the
    # band between is blended by a smooth factor.
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (original / wavelen - scaling.low_freq_factor) / (scaling.high_freq_factor - scaling.low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(medium, smoothed, scaled), 1.0


ScalingFn = Callable[[int, float, RopeScaling, int], "tuple[torch.Tensor, float]"]

SCALINGS: dict[str, ScalingFn] = {
    "linear": _linear,
    "ntk": _ntk,
    "dynamic": _dynamic,
    "yarn": _yarn,
    "llama3": _llama3,
}


def _pair_views(x: torch.Tensor, half: int, interleaved: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Return views of the two members of each rotated pair, (..., R/2) each."""
    if interleaved:
        return x[..., 0:2 * half:2], x[..., 1:2 * half:2]
    return x[..., :half], x[..., half:2 * half]


def _rotate(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool, inverse: bool,
) -> torch.Tensor:
    """Rotate float32 x (B, H, T, D) by the angles of cos, sin (B, T, R/2), or by their negatives.

    Each half of the output is written in place, so no concatenated copies of
    x or of cos and sin are made. The compiled kernel, when available, does the
    whole rotation in one pass.
    """
    if kernels.usable(x, cos, sin):
        return kernels.rope(x, cos, sin, interleaved, inverse)
    half = cos.shape[-1]
    cos = cos[:, None]  # (B, 1, T, R/2)
    sin = sin[:, None]
    sign = -1.0 if inverse else 1.0
    out = torch.empty_like(x)
    first, second = _pair_views(x, half, interleaved)
    out_first, out_second = _pair_views(out, half, interleaved)
    torch.mul(first, cos, out=out_first)
    out_first.addcmul_(second, sin, value=-sign)  # first cos - second sin
    torch.mul(second, cos, out=out_second)
    out_second.addcmul_(first, sin, value=sign)  # second cos + first sin
    if 2 * half < x.shape[-1]:
        out[..., 2 * half:] = x[..., 2 * half:]
    return out


class _RotaryFunction(torch.autograd.Function):
    """RoPE on float32 x; the backward applies the inverse rotation to the gradient.

    A rotation is orthogonal, so the gradient of x is the output gradient
    rotated back. Only cos and sin (B, T, R/2) are saved, never x.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool) -> torch.Tensor:
        ctx.save_for_backward(cos, sin)
        ctx.interleaved = interleaved
        return _rotate(x, cos, sin, interleaved, inverse=False)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        cos, sin = ctx.saved_tensors
        return _rotate(grad, cos, sin, ctx.interleaved, inverse=True), None, None, None


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool = False) -> torch.Tensor:
    """Rotate the first R dimensions of ``x`` by the given angles.

    Args:
        x: queries or keys (B, H, T, D).
        cos, sin: (B, T, R/2) float32, from ``RotaryEmbedding.forward``.
        interleaved: rotate pairs (2i, 2i+1) instead of (i, i + R/2).

    Returns:
        The rotated tensor in the dtype of ``x``. The rotation runs in float32.
    """
    half = cos.shape[-1]
    rotary = 2 * half
    plain_float32 = x.dtype == cos.dtype == sin.dtype == torch.float32
    # torch.compile fuses the plain formula below better than the in-place one.
    eager = not torch.compiler.is_compiling()
    if eager and plain_float32 and not (cos.requires_grad or sin.requires_grad):
        if torch.is_grad_enabled() and x.requires_grad:
            return _RotaryFunction.apply(x, cos, sin, interleaved)
        return _rotate(x, cos, sin, interleaved, inverse=False)
    cos = cos[:, None]  # (B, 1, T, R/2)
    sin = sin[:, None]
    rotated_part = x[..., :rotary].float()
    if interleaved:
        even, odd = rotated_part[..., 0::2], rotated_part[..., 1::2]
        out = torch.stack((even * cos - odd * sin, odd * cos + even * sin), dim=-1).flatten(-2)
    else:
        first, second = rotated_part[..., :half], rotated_part[..., half:]
        out = torch.cat((first * cos - second * sin, second * cos + first * sin), dim=-1)
    out = out.to(x.dtype)
    if rotary < x.shape[-1]:
        out = torch.cat((out, x[..., rotary:]), dim=-1)
    return out


class RotaryEmbedding(nn.Module):
    """Rotary embedding with an optional context-extension scaling.

    Args:
        dim: the rotary width R (even); the head width for full rotation.
        theta: frequency base (10000 in Su et al. 2021).
        interleaved: GPT-J / Meta LLaMA pair layout instead of split halves.
        scaling: an optional ``RopeScaling``.

    Raises:
        ValueError: for an odd or non-positive ``dim``.
    """

    def __init__(
        self, *, dim: int, theta: float = 10000.0, interleaved: bool = False,
        scaling: RopeScaling | None = None,
    ) -> None:
        super().__init__()
        if dim < 2 or dim % 2:
            raise ValueError(f"RotaryEmbedding.dim: invalid value {dim}; expected an even integer >= 2")
        self.dim = dim
        self.theta = theta
        self.interleaved = interleaved
        self.scaling = scaling
        self._static = scaling is None or scaling.type != "dynamic"
        self._frequencies = self._compute(seq_len=0) if self._static else None

    def _compute(self, seq_len: int) -> tuple[torch.Tensor, float]:
        if self.scaling is None:
            return inverse_frequencies(self.dim, self.theta), 1.0
        inv_freq, attention_factor = SCALINGS[self.scaling.type](self.dim, self.theta, self.scaling, seq_len)
        return inv_freq.float(), attention_factor

    def frequencies(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, float]:
        """Return (inv_freq (R/2,) float32, attention_factor) for these positions."""
        if self._static:
            inv_freq, factor = self._frequencies
        else:
            seq_len = int(position_ids.max()) + 1 if position_ids.numel() else 0
            inv_freq, factor = self._compute(seq_len)
        return inv_freq.to(position_ids.device), factor

    def angles(self, position_ids: torch.Tensor) -> torch.Tensor:
        """Return the float32 angles pos * inv_freq, (B, T, R/2), whatever the dtypes around."""
        inv_freq, _ = self.frequencies(position_ids)
        with torch.autocast(device_type=position_ids.device.type, enabled=False):
            return position_ids.float()[..., None] * inv_freq

    def forward(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (cos, sin), each (B, T, R/2) float32, with any attention factor applied."""
        inv_freq, factor = self.frequencies(position_ids)
        with torch.autocast(device_type=position_ids.device.type, enabled=False):
            angles = position_ids.float()[..., None] * inv_freq  # (B, T, R/2)
            cos, sin = angles.cos(), angles.sin()
            if factor != 1.0:
                cos, sin = cos * factor, sin * factor
        return cos, sin

    def rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Apply the rotation to ``x`` (B, H, T, D) in this module's layout."""
        return apply_rotary(x, cos, sin, self.interleaved)
