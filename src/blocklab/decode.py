"""A lean single-token decoding step for unpadded batches.

Each decoding step runs one token per sequence through every layer. For a small
model on a CPU the per-operator cost, not the arithmetic, sets the speed, and
``Transformer.forward`` is general: it builds masks, finds padding, computes
positions and reshapes (B, 1, C) tensors through views and transposes. This
step works on (B, C) rows instead, reads the next position from the cache
length and takes RoPE angles from a table made once. For the 0.9 M-parameter
llama preset that is about 400 PyTorch operator calls per token (views
included, as the profiler counts them) against about 650 for the general
path. It computes the same function as ``Transformer.forward``, up to float
rounding, with the same weights and the same KVCache, which it keeps up to
date, so the general path can continue from it.

It applies when the model is causal, has no score bias (ALiBi, relative, T5),
keeps its residual connections, and no sequence of the batch is padded.
``LeanDecoder.build`` returns None otherwise.

Shapes: B batch, C width, H query heads, K key/value heads, G = H / K, D head
width, S cached length, V vocabulary.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from blocklab.model import Transformer
from blocklab.nn.block import TransformerBlock
from blocklab.nn.cache import KVCache
from blocklab.nn import kernels
from blocklab.nn.feedforward import _gated_forward
from blocklab.nn.norms import RMSNorm
from blocklab.nn.rotary import apply_rotary

# Up to this many rows (sequences), a linear layer with at least
# KERNEL_MIN_WEIGHTS weights runs through the kernels' matrix-vector product,
# which streams the weights faster than a GEMM call. Smaller layers cost less
# through F.linear, whose call overhead is lower than a ctypes call's.
FEW_ROWS = 8
KERNEL_MIN_WEIGHTS = 1 << 16


class _Linear:
    """A linear layer's weight and bias, applied to (B, in) rows."""

    __slots__ = ("weight", "bias", "fused")

    def __init__(self, layer: torch.nn.Linear) -> None:
        self.weight, self.bias = layer.weight, layer.bias
        self.fused = (
            self.weight.numel() >= KERNEL_MIN_WEIGHTS and self.weight.is_contiguous()
            and kernels.usable(self.weight) and (self.bias is None or kernels.usable(self.bias))
        )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused and x.shape[0] <= FEW_ROWS and x.is_contiguous() and x.dtype == torch.float32:
            return kernels.linear_rows(x, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)


def _norm_function(norm: torch.nn.Module | None):
    """Return a function that applies ``norm`` to (B, C) rows, calling the kernel directly where it can."""
    if norm is None:
        return None
    if isinstance(norm, RMSNorm) and norm.bias is None and norm.weight.dtype == torch.float32:
        gain = (1.0 + norm.weight) if norm.unit_offset else norm.weight
        if gain.is_contiguous() and kernels.usable(gain):
            eps = norm.eps

            def rms_norm(x: torch.Tensor) -> torch.Tensor:
                if x.dtype != torch.float32 or not x.is_contiguous():
                    return norm(x)
                return kernels.rms_norm_forward(x, gain, eps, want_rstd=False)[0]

            return rms_norm
    return norm


class _LayerPlan:
    """One block's weights and settings, looked up once per decode instead of once per token."""

    def __init__(self, block: TransformerBlock) -> None:
        attention, ffn = block.attn, block.ffn
        self.post = block.residual == "post"
        self.attn_norm = _norm_function(block.attn_norm)
        self.attn_out_norm = _norm_function(block.attn_out_norm)
        self.ffn_norm = _norm_function(block.ffn_norm)
        self.ffn_out_norm = _norm_function(block.ffn_out_norm)
        self.qkv, self.out = _Linear(attention.qkv), _Linear(attention.out)
        self.heads, self.kv_heads, self.head_dim = attention.num_heads, attention.num_kv_heads, attention.head_dim
        self.scale = attention.scale if attention.scale is not None else attention.head_dim**-0.5
        self.interleaved = attention.rotary_interleaved
        self.gated, self.activation, self.act = ffn.gated, ffn.activation, ffn.act
        self.gate = _Linear(ffn.gate) if ffn.gated else None
        self.up, self.down = _Linear(ffn.up), _Linear(ffn.down)
        # Gate, up and SiLU in one pass over both weights, for bias-free SwiGLU.
        self.swiglu_kernel = (
            self.activation == "swiglu" and self.gate.fused and self.up.fused
            and self.gate.bias is None and self.up.bias is None
        )


class LeanDecoder:
    """Decode one token per sequence at a time from a filled KVCache.

    Build it with ``LeanDecoder.build`` after the prompt's forward pass.
    """

    def __init__(self, model: Transformer, cache: KVCache, max_length: int) -> None:
        self.model = model
        self.cache = cache
        self.batch = cache.key_mask.shape[0]
        self.layers = [_LayerPlan(block) for block in model.blocks]
        self.final_norm = _norm_function(model.final_norm)
        self.lm_head = _Linear(model.lm_head)
        windows = [block.attn.sliding_window for block in model.blocks if block.attn.sliding_window is not None]
        self.window = min(windows) if windows else None
        device = cache.key_mask.device
        self.real = torch.ones((self.batch, 1), dtype=torch.bool, device=device)
        # Every position this decode can reach, so a step slices instead of allocating.
        self.positions = torch.arange(max_length, device=device)[None, :, None].expand(self.batch, -1, -1)
        self.rope_table = None
        rotary = model.rotary
        if rotary is not None and rotary._static:
            # cos and sin for every position this decode can reach, (1, L, R/2) each.
            self.rope_table = rotary(torch.arange(max_length, device=cache.key_mask.device)[None])
        self.rope_kernel = self.rope_table is not None and kernels.usable(*self.rope_table)

    @classmethod
    def build(
        cls, model: torch.nn.Module, cache: KVCache | None, attention_mask: torch.Tensor | None,
        max_length: int,
    ) -> LeanDecoder | None:
        """Return a decoder for this model and cache, or None when the general path is needed.

        Args:
            model: the model that filled the cache.
            cache: the KVCache after the prompt.
            attention_mask: the prompt's mask (None for no padding).
            max_length: prompt length plus new tokens, to size the RoPE table.
        """
        if not isinstance(model, Transformer) or cache is None or cache.key_mask is None:
            return None
        if not model.config.causal or model.score_bias is not None or model.token_type is not None:
            return None
        if model.training or model.lm_head is None:
            return None
        for block in model.blocks:
            if not isinstance(block, TransformerBlock) or not block.residual_enabled:
                return None
        if attention_mask is not None and not bool(attention_mask.bool().all()):
            return None
        if not bool(cache.key_mask.all()):
            return None
        return cls(model, cache, max_length)

    def _needs_general_path(self) -> bool:
        """Return True when a sliding window now hides keys, which this step does not mask."""
        return self.window is not None and len(self.cache) + 1 > self.window

    def step(self, token: torch.Tensor) -> torch.Tensor:
        """Run the (B,) tokens at the next position and return their logits (B, V)."""
        model, cache = self.model, self.cache
        if self._needs_general_path():
            return model(token[:, None], cache=cache).logits[:, -1]
        config = model.config
        position = len(cache)
        if position >= config.max_seq_len and model.position is not None and config.position == "learned":
            # The general path raises the learned table's error without touching the cache.
            return model(token[:, None], cache=cache).logits[:, -1]
        if position < self.positions.shape[1]:
            positions = self.positions[:, position]  # (B, 1)
        else:
            positions = torch.full((self.batch, 1), position, dtype=torch.long, device=token.device)

        h = F.embedding(token, model.embed.weight)  # (B, C)
        if config.scale_embeddings:
            h = h * torch.tensor(math.sqrt(config.d_model), dtype=h.dtype)
        if model.position is not None:
            h = h + model.position(positions, dtype=h.dtype)[:, 0]
        if model.embed_norm is not None:
            h = model.embed_norm(h)

        rope = None
        if model.rotary is not None:
            if self.rope_table is not None and position < self.rope_table[0].shape[1]:
                rope = (self.rope_table[0][:, position:position + 1], self.rope_table[1][:, position:position + 1])
            else:
                rope = model.rotary(positions)
        cache.append_tokens(self.real, positions)
        for index, plan in enumerate(self.layers):
            if plan.post:
                h = plan.attn_norm(h + self._attend(plan, h, rope, index))
                h = plan.ffn_norm(h + self._feedforward(plan, h))
                continue
            y = self._attend(plan, plan.attn_norm(h), rope, index)
            h = h + (y if plan.attn_out_norm is None else plan.attn_out_norm(y))
            y = self._feedforward(plan, plan.ffn_norm(h))
            h = h + (y if plan.ffn_out_norm is None else plan.ffn_out_norm(y))
        if self.final_norm is not None:
            h = self.final_norm(h)
        return self.lm_head(h)  # (B, V)

    def _attend(
        self, plan: _LayerPlan, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None, layer: int,
    ) -> torch.Tensor:
        batch = x.shape[0]
        heads, kv_heads, head_dim = plan.heads, plan.kv_heads, plan.head_dim
        qkv = plan.qkv(x).view(batch, heads + 2 * kv_heads, 1, head_dim)  # (B, H + 2K, 1, D)
        qk, v = qkv[:, : heads + kv_heads], qkv[:, heads + kv_heads:]
        if rope is not None and self.rope_kernel and qk.dtype == torch.float32:
            qk = kernels.rope(qk, rope[0], rope[1], plan.interleaved, inverse=False)  # (B, H + K, 1, D)
        elif rope is not None:
            qk = apply_rotary(qk, rope[0], rope[1], plan.interleaved)
        q, k = qk[:, :heads], qk[:, heads:]
        keys, values = self.cache.update(layer, k, v)  # (B, K, S, D)
        # For one query, PyTorch's fused attention is one operator where the
        # products, scale and softmax would be five.
        out = F.scaled_dot_product_attention(
            q, keys, values, scale=plan.scale, enable_gqa=heads != kv_heads,
        )  # (B, H, 1, D)
        return plan.out(out.view(batch, heads * head_dim))

    @staticmethod
    def _feedforward(plan: _LayerPlan, x: torch.Tensor) -> torch.Tensor:
        if plan.swiglu_kernel and x.shape[0] <= FEW_ROWS and x.dtype == torch.float32 and x.is_contiguous():
            hidden = kernels.linear_rows_swiglu(x, plan.gate.weight, plan.up.weight)
        elif plan.gated:
            hidden = _gated_forward(plan.gate(x), plan.up(x), plan.activation)
        else:
            hidden = plan.act(plan.up(x))
        return plan.down(hidden)
