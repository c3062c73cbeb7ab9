"""Normalization layers. Statistics are computed in float32 and the result is
cast back to the input dtype, so float16 inputs with large values neither
overflow in x^2 nor lose precision in the mean.

Every norm takes ``forward(x, mask=None)`` with x (B, T, C) and an optional
real-token mask (B, T); only BatchNorm reads the mask, because only its
statistics cross tokens.

Shapes: B batch, T length, C width.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

from blocklab.nn import kernels


class LayerNorm(nn.Module):
    """Layer normalization (Ba et al. 2016): (x - mean) / sqrt(var + eps) * g + b.

    Args:
        dim: C.
        eps: added to the variance.
        bias: learn the additive b.
    """

    def __init__(self, *, dim: int, eps: float = 1e-5, bias: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)
        bias = None if self.bias is None else self.bias.float()
        out = F.layer_norm(x.float(), x.shape[-1:], self.weight.float(), bias, self.eps)
        return out.to(x.dtype)


def _rms_norm_float32(x: torch.Tensor, gain: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Return RMSNorm(x) * gain and rstd (..., 1) for float32 x and gain."""
    if x.is_contiguous() and kernels.usable(x, gain):
        return kernels.rms_norm_forward(x, gain.contiguous(), eps, want_rstd=True)
    # mean(x^2) as ||x||^2 / C: one reduction kernel instead of pow and mean.
    rstd = torch.linalg.vector_norm(x, dim=-1, keepdim=True)  # (..., 1)
    rstd = rstd.square_().div_(x.shape[-1]).add_(eps).rsqrt_()
    return (x * rstd).mul_(gain), rstd


class _RMSNormFunction(torch.autograd.Function):
    """RMSNorm y = x * rstd * g of float32 x and g, with a fused backward.

    The forward saves only x and the per-row rstd = 1 / sqrt(mean(x^2) + eps).
    With the compiled kernels (blocklab.nn.kernels) both directions are one
    pass per row. Without them the backward runs PyTorch's fused LayerNorm backward kernel with a zero
    mean. That kernel returns the gain gradient sum(dy * x * rstd), which is
    RMSNorm's too, and the input gradient rstd * (dy g - mean(dy g) - xhat
    mean(dy g xhat)). RMSNorm's input gradient lacks the -mean(dy g) term,
    because its statistic has no mean, so rstd * mean(dy g) is added back.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, gain: torch.Tensor, eps: float) -> torch.Tensor:
        out, rstd = _rms_norm_float32(x, gain, eps)
        ctx.save_for_backward(x, gain, rstd)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        x, gain, rstd = ctx.saved_tensors
        width = x.shape[-1]
        need_x, need_gain = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad = grad.contiguous()
        if x.is_contiguous() and kernels.usable(x, gain, grad):
            grad_x, grad_gain = kernels.rms_norm_backward(grad, x, gain.contiguous(), rstd, need_x, need_gain)
            return grad_x, grad_gain, None
        grad_x, grad_gain, _ = torch.ops.aten.native_layer_norm_backward(
            grad, x, [width], torch.zeros_like(rstd), rstd, gain, None, [need_x, need_gain, False],
        )
        if need_x:
            mean_grad_gain = (grad.reshape(-1, width) @ gain).view(rstd.shape) / width  # (..., 1)
            # Multiplying the two (..., 1) columns first is much faster than
            # addcmul_, which broadcasts both over the full width.
            grad_x.add_(mean_grad_gain.mul_(rstd))
        return grad_x, grad_gain, None


class RMSNorm(nn.Module):
    """Root-mean-square normalization (Zhang & Sennrich 2019).

    y = x / sqrt(mean(x^2) + eps) * g (+ b when ``bias``), or with (1 + g) when
    ``unit_offset`` (Gemma), the 1 added in float32 so a small g is not lost.

    Args:
        dim: C.
        eps: added to the mean square.
        bias: learn an additive b (off in LLaMA-style models).
        unit_offset: scale by (1 + g); g then starts at zero.
        cast: where the float32 result returns to the input dtype.
            ``cast_then_scale`` (default; `transformers`' LLaMA and T5) casts the
            normalized x and multiplies by g in the input dtype;
            ``scale_then_cast`` (Gemma) multiplies in float32 and casts last.
            In float32 the two agree exactly.
    """

    def __init__(
        self, *, dim: int, eps: float = 1e-6, bias: bool = False, unit_offset: bool = False,
        cast: str = "cast_then_scale",
    ) -> None:
        super().__init__()
        if cast not in ("cast_then_scale", "scale_then_cast"):
            raise ValueError(
                f"RMSNorm.cast: invalid value {cast!r}; expected cast_then_scale or scale_then_cast"
            )
        self.eps = eps
        self.unit_offset = unit_offset
        self.cast = cast
        init = torch.zeros(dim) if unit_offset else torch.ones(dim)
        self.weight = nn.Parameter(init)
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        dtype = x.dtype
        gain = 1.0 + self.weight.float() if self.unit_offset else self.weight
        if dtype == torch.float32 and gain.dtype == torch.float32 and x.numel():
            # In float32 both cast orders are the same computation.
            if torch.is_grad_enabled() and (x.requires_grad or gain.requires_grad):
                out = _RMSNormFunction.apply(x, gain, self.eps)
            elif x.is_contiguous() and gain.is_contiguous() and kernels.usable(x, gain):
                # Inference: no autograd.Function and no rstd, which decoding notices.
                out = kernels.rms_norm_forward(x, gain, self.eps, want_rstd=False)[0]
            else:
                out = _rms_norm_float32(x, gain, self.eps)[0]
            return out if self.bias is None else out + self.bias
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.cast == "scale_then_cast":
            out = normed * gain.float()
            if self.bias is not None:
                out = out + self.bias.float()
            return out.to(dtype)
        out = normed.to(dtype) * gain.to(dtype)
        if self.bias is not None:
            out = out + self.bias.to(dtype)
        return out


class BatchNorm(nn.Module):
    """Batch normalization over tokens (Ioffe & Szegedy 2015) that ignores padding.

    Training statistics are the mean and variance of each channel over the real
    tokens of the batch only, so the amount of padding changes nothing, and
    padding positions of the output are zero whenever a mask is given. Running
    statistics (momentum as in ``torch.nn.BatchNorm1d``) serve in eval mode.

    Args:
        dim: C.
        eps: added to the variance.
        momentum: running-statistics update rate.
    """

    def __init__(self, *, dim: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.eps = eps
        self.momentum = momentum
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.register_buffer("running_mean", torch.zeros(dim))
        self.register_buffer("running_var", torch.ones(dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.float()
        if self.training:
            if mask is None:
                flat = x32.reshape(-1, x.shape[-1])  # (N, C)
            else:
                flat = x32[mask.bool()]  # (N real tokens, C)
            count = flat.shape[0]
            if count == 0:
                mean = torch.zeros_like(self.running_mean, dtype=torch.float32)
                var = torch.ones_like(mean)
            else:
                mean = flat.mean(0)
                var = flat.var(0, unbiased=False)
            with torch.no_grad():
                if count > 0:
                    unbiased = var * count / max(count - 1, 1)
                    self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), self.momentum)
                    self.running_var.lerp_(unbiased.detach().to(self.running_var.dtype), self.momentum)
        else:
            mean, var = self.running_mean.float(), self.running_var.float()
        out = (x32 - mean) * torch.rsqrt(var + self.eps) * self.weight.float() + self.bias.float()
        if mask is not None:
            # Real-token statistics can scale padding by up to 1/sqrt(eps) per
            # norm, and over many layers that reaches inf. Padding leaves as zeros.
            out = out.masked_fill(~mask.bool()[..., None], 0.0)
        return out.to(dtype)


class ScaleNorm(nn.Module):
    """ScaleNorm (Nguyen & Salazar 2019): g * x / max(||x||, eps), one scalar g.

    Args:
        dim: C; g starts at sqrt(C), which makes the output's RMS 1.
        eps: floor on the norm.
    """

    def __init__(self, *, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.tensor(math.sqrt(dim)))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x32 = x.float()
        norm = x32.norm(dim=-1, keepdim=True).clamp(min=self.eps)
        return (x32 * (self.scale.float() / norm)).to(x.dtype)


def build_norm(kind: str, *, dim: int, eps: float, bias: bool = False, unit_offset: bool = False,
               cast: str = "cast_then_scale") -> nn.Module:
    """Build a norm by its config name (layernorm, rmsnorm, batchnorm, scalenorm)."""
    if kind == "layernorm":
        return LayerNorm(dim=dim, eps=eps, bias=bias)
    if kind == "rmsnorm":
        return RMSNorm(dim=dim, eps=eps, bias=bias, unit_offset=unit_offset, cast=cast)
    if kind == "batchnorm":
        return BatchNorm(dim=dim, eps=eps)
    if kind == "scalenorm":
        return ScaleNorm(dim=dim, eps=eps)
    raise ValueError(f"norm: invalid value {kind!r}; expected layernorm, rmsnorm, batchnorm or scalenorm")
