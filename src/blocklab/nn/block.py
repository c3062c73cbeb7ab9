"""The Transformer block: attention and FFN sublayers joined by residual wiring.

Three wirings, for a sublayer f:

- ``post`` (Vaswani et al. 2017): x = Norm(x + f(x))
- ``pre`` (Xiong et al. 2020; GPT-2, LLaMA): x = x + f(Norm(x))
- ``sandwich`` (Ding et al. 2021, CogView): x = x + Norm(f(Norm(x)))

Shapes: B batch, T length, S key length, H heads, C width.
"""

from __future__ import annotations

import torch
from torch import nn

from blocklab.config import RESIDUALS
from blocklab.nn.attention import Attention
from blocklab.nn.cache import KVCache
from blocklab.nn.feedforward import FeedForward


class TransformerBlock(nn.Module):
    """One attention sublayer and one FFN sublayer with their norms.

    Args:
        attention: the attention module.
        feedforward: the FFN module.
        attn_norm, ffn_norm: the norms of each sublayer (applied to the input in
            pre and sandwich wiring, to the sum in post wiring).
        attn_out_norm, ffn_out_norm: the sandwich wiring's output norms.
        residual: post, pre or sandwich.
        dropout: dropout on each sublayer's output before the residual sum.
        residual_enabled: False drops the skip connections (x = f(...)), which
            only studies of gradient flow want.

    Raises:
        ValueError: for an unknown wiring, or sandwich norms missing.
    """

    def __init__(
        self, *, attention: Attention, feedforward: FeedForward, attn_norm: nn.Module,
        ffn_norm: nn.Module, residual: str = "pre", attn_out_norm: nn.Module | None = None,
        ffn_out_norm: nn.Module | None = None, dropout: float = 0.0,
        residual_enabled: bool = True,
    ) -> None:
        super().__init__()
        if residual not in RESIDUALS:
            raise ValueError(
                f"TransformerBlock.residual: invalid value {residual!r}; expected one of {', '.join(RESIDUALS)}"
            )
        if residual == "sandwich" and (attn_out_norm is None or ffn_out_norm is None):
            raise ValueError("TransformerBlock: sandwich wiring needs attn_out_norm and ffn_out_norm")
        self.residual = residual
        self.residual_enabled = residual_enabled
        self.attn_norm = attn_norm
        self.attn = attention
        self.ffn_norm = ffn_norm
        self.ffn = feedforward
        self.attn_out_norm = attn_out_norm if residual == "sandwich" else None
        self.ffn_out_norm = ffn_out_norm if residual == "sandwich" else None
        self.dropout = nn.Dropout(dropout)

    def _sublayer(self, x: torch.Tensor, fn, norm: nn.Module, out_norm: nn.Module | None,
                  mask: torch.Tensor | None) -> torch.Tensor:
        skip = x if self.residual_enabled else torch.zeros_like(x)
        if self.residual == "post":
            return norm(skip + self.dropout(fn(x)), mask)
        y = fn(norm(x, mask))
        if out_norm is not None:
            y = out_norm(y, mask)
        return skip + self.dropout(y)

    def forward(
        self,
        x: torch.Tensor,
        *,
        causal: bool = True,
        token_mask: torch.Tensor | None = None,
        key_mask: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> torch.Tensor:
        """Apply the block to x (B, T, C) and return (B, T, C).

        Args:
            x: hidden states.
            causal: causal attention.
            token_mask: (B, T) real-token mask of x, read by BatchNorm only.
            key_mask: (B, S) real-token mask of every key, cached ones included.
            bias: score bias (B, H, T, S).
            rope: (cos, sin) for rotary attention.
            cache: KVCache to extend.
            layer: this block's index in the cache.
        """
        def attend(h: torch.Tensor) -> torch.Tensor:
            return self.attn(h, causal=causal, key_mask=key_mask, bias=bias, rope=rope,
                             cache=cache, layer=layer)

        x = self._sublayer(x, attend, self.attn_norm, self.attn_out_norm, token_mask)
        return self._sublayer(x, self.ffn, self.ffn_norm, self.ffn_out_norm, token_mask)
