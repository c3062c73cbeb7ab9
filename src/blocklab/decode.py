"""A lean single-token decoding step for unpadded batches.

Each decoding step runs one token per sequence through every layer. For a small
model on a CPU the per-operator cost, not the arithmetic, sets the speed, and
``Transformer.forward`` is general: it builds masks, finds padding, computes
positions and reshapes (B, 1, C) tensors through views and transposes. This
step works on (B, C) rows instead, reads the next position from the cache
length, takes RoPE angles from a table made once, and so runs about a quarter
of the operators per token. It computes the same function as
``Transformer.forward`` with the same weights and the same KVCache, which it
keeps up to date, so the general path can continue from it.

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
from blocklab.nn.attention import Attention
from blocklab.nn.block import TransformerBlock
from blocklab.nn.cache import KVCache
from blocklab.nn import kernels
from blocklab.nn.feedforward import _gated_forward
from blocklab.nn.rotary import apply_rotary

# Up to this many rows (sequences) a linear layer runs through the kernels'
# matrix-vector product, which streams the weights faster than a GEMM call.
FEW_ROWS = 8


def _linear(layer: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """Apply ``layer`` to x (B, in), with the few-row kernel when it applies."""
    weight, bias = layer.weight, layer.bias
    if (
        x.shape[0] <= FEW_ROWS and x.is_contiguous() and weight.is_contiguous()
        and kernels.usable(x, weight) and (bias is None or bias.dtype == torch.float32)
    ):
        return kernels.linear_rows(x, weight, bias)
    return layer(x)


class LeanDecoder:
    """Decode one token per sequence at a time from a filled KVCache.

    Build it with ``LeanDecoder.build`` after the prompt's forward pass.
    """

    def __init__(self, model: Transformer, cache: KVCache, max_length: int) -> None:
        self.model = model
        self.cache = cache
        self.batch = cache.key_mask.shape[0]
        self.rope_table = None
        rotary = model.rotary
        if rotary is not None and rotary._static:
            # cos and sin for every position this decode can reach, (1, L, R/2) each.
            positions = torch.arange(max_length, device=cache.key_mask.device)[None]
            self.rope_table = rotary(positions)

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
        length = len(self.cache) + 1
        return any(
            block.attn.sliding_window is not None and length > block.attn.sliding_window
            for block in self.model.blocks
        )

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
        positions = torch.full((self.batch, 1), position, dtype=torch.long, device=token.device)
        real = torch.ones((self.batch, 1), dtype=torch.bool, device=token.device)

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
        cache.append_tokens(real, positions)
        for index, block in enumerate(model.blocks):
            h = self._sublayer(block, h, lambda x: self._attend(block.attn, x, rope, index),
                               block.attn_norm, block.attn_out_norm)
            h = self._sublayer(block, h, lambda x: self._feedforward(block, x), block.ffn_norm, block.ffn_out_norm)
        if model.final_norm is not None:
            h = model.final_norm(h)
        return _linear(model.lm_head, h)  # (B, V)

    @staticmethod
    def _sublayer(block: TransformerBlock, h: torch.Tensor, function, norm, out_norm) -> torch.Tensor:
        if block.residual == "post":
            return norm(h + function(h))
        y = function(norm(h))
        if out_norm is not None:
            y = out_norm(y)
        return h + y

    def _attend(
        self, attention: Attention, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None, layer: int,
    ) -> torch.Tensor:
        batch = x.shape[0]
        heads, kv_heads, head_dim = attention.num_heads, attention.num_kv_heads, attention.head_dim
        qkv = _linear(attention.qkv, x).view(batch, heads + 2 * kv_heads, 1, head_dim)  # (B, H + 2K, 1, D)
        qk, v = qkv[:, : heads + kv_heads], qkv[:, heads + kv_heads:]
        if rope is not None:
            qk = apply_rotary(qk, rope[0], rope[1], attention.rotary_interleaved)  # (B, H + K, 1, D)
        q, k = qk[:, :heads], qk[:, heads:]
        keys, values = self.cache.update(layer, k, v)  # (B, K, S, D)
        scale = attention.scale if attention.scale is not None else head_dim**-0.5
        grouped = q.reshape(batch, kv_heads, heads // kv_heads, head_dim)  # (B, K, G, D)
        scores = torch.matmul(grouped, keys.transpose(-1, -2)).mul_(scale)  # (B, K, G, S)
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(values.dtype)
        out = torch.matmul(probs, values)  # (B, K, G, D)
        return _linear(attention.out, out.view(batch, heads * head_dim))

    @staticmethod
    def _feedforward(block: TransformerBlock, x: torch.Tensor) -> torch.Tensor:
        ffn = block.ffn
        if ffn.gated:
            hidden = _gated_forward(_linear(ffn.gate, x), _linear(ffn.up, x), ffn.activation)
        else:
            hidden = ffn.act(_linear(ffn.up, x))
        return _linear(ffn.down, hidden)
