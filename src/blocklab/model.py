"""The Transformer: embeddings, a stack of blocks, a final norm and an output head.

Positions are explicit. Unless the caller passes ``position_ids``, the model
builds them from the attention mask (cumsum(mask) - 1, so left padding works)
plus the number of real tokens already in the cache, and hands them to the
active encoding:

- none: nothing; causal masking alone carries order.
- sinusoidal, learned: added to the token embeddings.
- relative, t5, alibi: a score bias (B, H, T, S), computed once per forward
  and shared by every layer (as T5 shares its first layer's bias).
- rope: queries and keys rotated in every layer.

Shapes: B batch, T new tokens, S keys (cached plus new), C width, V vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from blocklab.config import ModelConfig
from blocklab.nn.attention import Attention
from blocklab.nn.bias import ALiBi, RelativePositionBias, T5RelativePositionBias
from blocklab.nn.block import TransformerBlock
from blocklab.nn.cache import KVCache
from blocklab.nn.feedforward import FeedForward
from blocklab.nn.loss import IGNORE_INDEX, linear_cross_entropy
from blocklab.nn.norms import build_norm
from blocklab.nn.positional import LearnedPositionalEmbedding, SinusoidalPositionalEncoding
from blocklab.nn.rotary import RotaryEmbedding


@dataclass
class ModelOutput:
    """The result of a forward pass.

    Attributes:
        logits: (B, T, V) float, or None when the model has no output head or
            when ``targets`` were given and the loss was computed without them.
        hidden_states: (B, T, C), the last block's output after the final norm.
        cache: the KVCache to continue from, or None unless requested.
        pooled: (B, C) tanh pooler output over the first token, or None.
        loss: mean cross-entropy over the targets, or None without targets.
    """

    logits: torch.Tensor | None
    hidden_states: torch.Tensor
    cache: KVCache | None = None
    pooled: torch.Tensor | None = None
    loss: torch.Tensor | None = None


def build_block(config: ModelConfig) -> TransformerBlock:
    """Assemble one block from the config's choices."""
    def norm() -> nn.Module:
        return build_norm(
            config.norm, dim=config.d_model, eps=config.norm_eps, bias=config.use_norm_bias,
            unit_offset=config.rmsnorm_unit_offset, cast=config.rmsnorm_cast,
        )

    attention = Attention(
        dim=config.d_model, num_heads=config.n_heads, num_kv_heads=config.kv_heads,
        head_dim=config.dim_per_head, qkv_bias=config.qkv_bias, out_bias=config.out_bias,
        dropout=config.attn_dropout, scale=config.attn_scale, sliding_window=config.sliding_window,
        rotary_interleaved=config.rope.interleaved,
    )
    feedforward = FeedForward(
        dim=config.d_model, hidden_dim=config.ffn_dim, activation=config.ffn,
        bias=config.ffn_bias, dropout=0.0,
    )
    sandwich = config.residual == "sandwich"
    return TransformerBlock(
        attention=attention, feedforward=feedforward, attn_norm=norm(), ffn_norm=norm(),
        residual=config.residual, attn_out_norm=norm() if sandwich else None,
        ffn_out_norm=norm() if sandwich else None, dropout=config.dropout,
    )


class Transformer(nn.Module):
    """A causal language model or a bidirectional encoder built from blocklab parts.

    Args:
        config: the ModelConfig; it was validated when it was built.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        self.token_type = nn.Embedding(c.type_vocab_size, c.d_model) if c.type_vocab_size else None

        self.position: nn.Module | None = None
        self.score_bias: nn.Module | None = None
        self.rotary: RotaryEmbedding | None = None
        if c.position == "sinusoidal":
            self.position = SinusoidalPositionalEncoding(dim=c.d_model)
        elif c.position == "learned":
            self.position = LearnedPositionalEmbedding(num_positions=c.max_seq_len, dim=c.d_model)
        elif c.position == "relative":
            self.score_bias = RelativePositionBias(num_heads=c.n_heads, max_distance=c.relative_max_distance)
        elif c.position == "t5":
            self.score_bias = T5RelativePositionBias(
                num_heads=c.n_heads, bidirectional=not c.causal, num_buckets=c.t5_num_buckets,
                max_distance=c.t5_max_distance,
            )
        elif c.position == "alibi":
            self.score_bias = ALiBi(num_heads=c.n_heads)
        elif c.position == "rope":
            self.rotary = RotaryEmbedding(
                dim=c.rotary_dim, theta=c.rope.theta, interleaved=c.rope.interleaved,
                scaling=c.rope.scaling,
            )

        def norm() -> nn.Module:
            return build_norm(
                c.norm, dim=c.d_model, eps=c.norm_eps, bias=c.use_norm_bias,
                unit_offset=c.rmsnorm_unit_offset, cast=c.rmsnorm_cast,
            )

        self.embed_norm = norm() if c.embed_norm else None
        self.dropout = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(build_block(c) for _ in range(c.n_layers))
        self.final_norm = norm() if c.use_final_norm else None
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False) if c.lm_head else None
        self.pooler = nn.Linear(c.d_model, c.d_model) if c.pooler else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise every weight from normal(0, init_std) and linear biases to zero.

        Matrices, embeddings, learned position tables and learned score biases
        all draw from the same normal.

        The output projections of attention and FFN are scaled by
        1 / sqrt(2 * n_layers), as GPT-2 does, so the residual stream's variance
        does not grow with depth at initialisation.
        """
        std = self.config.init_std
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (LearnedPositionalEmbedding, RelativePositionBias, T5RelativePositionBias)):
                # Learned biases start small and random, as T5 initialises its
                # bias embedding, so a model sees order from the first step.
                nn.init.normal_(module.weight, std=std)
        residual_std = std / math.sqrt(2 * self.config.n_layers)
        for block in self.blocks:
            nn.init.normal_(block.attn.out.weight, std=residual_std)
            nn.init.normal_(block.ffn.down.weight, std=residual_std)
        if self.config.tie_embeddings and self.lm_head is not None:
            self.lm_head.weight = self.embed.weight

    def num_parameters(self, *, exclude_embeddings: bool = False) -> int:
        """Count parameters once each (tied weights once)."""
        seen = {id(p): p for p in self.parameters()}
        total = sum(p.numel() for p in seen.values())
        if exclude_embeddings:
            total -= self.embed.weight.numel()
            if self.position is not None and isinstance(self.position, LearnedPositionalEmbedding):
                total -= self.position.weight.numel()
        return total

    def _check_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
        if input_ids.dim() != 2:
            raise ValueError(
                f"input_ids: invalid shape {tuple(input_ids.shape)}; expected (batch, length)"
            )
        # Reading the ids' range back to Python breaks a torch.compile graph, so
        # compiled runs skip it (an id outside the vocabulary then fails in the
        # embedding lookup instead).
        if input_ids.numel() and not torch.compiler.is_compiling():
            # One pass for both bounds: decoding runs this check at every step.
            low, high = (int(value) for value in torch.aminmax(input_ids))
            if low < 0 or high >= self.config.vocab_size:
                bad = low if low < 0 else high
                raise ValueError(
                    f"input_ids: token id {bad} is outside the vocabulary of {self.config.vocab_size}; "
                    "check the tokenizer matches the model"
                )
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask: shape {tuple(attention_mask.shape)} does not match input_ids "
                f"{tuple(input_ids.shape)}"
            )

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
        use_cache: bool = False,
        targets: torch.Tensor | None = None,
        logits_to_keep: int = 0,
    ) -> ModelOutput:
        """Run the model on (B, T) token ids.

        Args:
            input_ids: (B, T) token ids.
            attention_mask: (B, T) with 1 for real tokens and 0 for padding.
            position_ids: (B, T) positions; by default cumsum(mask) - 1 after the
                cache's real tokens.
            token_type_ids: (B, T) segment ids when the model has them (default 0).
            cache: a KVCache returned by an earlier call; the new tokens follow it.
            use_cache: return a cache (a new one when ``cache`` is None).
            targets: (B, T) next-token ids to score, -100 where no loss is
                wanted; they are not shifted. With targets the loss is computed
                chunk by chunk (blocklab.nn.loss) and logits come back as None,
                except under autocast or torch.compile, where the plain route
                runs and returns the logits too.
            logits_to_keep: compute logits for only the last N positions, as
                decoding needs for its prompt; 0 computes them for all.

        Returns:
            ModelOutput with logits (B, T, V), hidden_states (B, T, C), the cache,
            the pooled output and the loss.

        Raises:
            ValueError: for ids outside the vocabulary, mismatched shapes,
                learned positions past the table, targets without an output
                head, or targets outside the vocabulary.
        """
        c = self.config
        self._check_inputs(input_ids, attention_mask)
        batch, length = input_ids.shape
        device = input_ids.device
        if use_cache and cache is None:
            cache = KVCache(num_layers=c.n_layers)

        mask = (
            torch.ones(batch, length, dtype=torch.bool, device=device)
            if attention_mask is None else attention_mask.bool()
        )
        if position_ids is None:
            start = cache.next_positions if cache is not None and len(cache) else None
            position_ids = (mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, T)
            if start is not None:
                position_ids = position_ids + start[:, None]

        # Embeddings come before the cache grows, so that learned positions past
        # the table raise while the cache is still unchanged.
        h = self.embed(input_ids)  # (B, T, C)
        if c.scale_embeddings:
            h = h * torch.tensor(math.sqrt(c.d_model), dtype=h.dtype)
        if self.token_type is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(input_ids)
            h = h + self.token_type(token_type_ids)
        if self.position is not None:
            h = h + self.position(position_ids, dtype=h.dtype)
        if self.embed_norm is not None:
            h = self.embed_norm(h, mask)
        h = self.dropout(h)

        if cache is not None:
            key_mask, key_positions = cache.append_tokens(mask, position_ids)  # (B, S)
        else:
            key_mask, key_positions = mask, position_ids
        # Without a mask or a cache there is no padding, and no host sync to find out.
        any_padding = False if attention_mask is None and cache is None else not bool(key_mask.all())

        bias = self.score_bias(position_ids, key_positions) if self.score_bias is not None else None
        rope = self.rotary(position_ids) if self.rotary is not None else None
        for index, block in enumerate(self.blocks):
            h = block(
                h, causal=c.causal, token_mask=mask, key_mask=key_mask if any_padding else None,
                bias=bias, rope=rope, cache=cache, layer=index,
            )
        if self.final_norm is not None:
            h = self.final_norm(h, mask)

        loss = logits = None
        if targets is not None:
            loss, logits = self._loss(h, targets)
        elif self.lm_head is not None:
            logits = self.lm_head(h[:, -logits_to_keep:] if logits_to_keep > 0 else h)  # (B, T or N, V)
        pooled = torch.tanh(self.pooler(h[:, 0])) if self.pooler is not None else None  # (B, C)
        return ModelOutput(logits=logits, hidden_states=h, cache=cache if use_cache or cache is not None else None,
                           pooled=pooled, loss=loss)

    def _loss(self, h: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return (mean cross-entropy, logits or None) of the head on h (B, T, C) against targets (B, T)."""
        if self.lm_head is None:
            raise ValueError("targets: this model has no output head (lm_head=false), so it has no loss")
        if targets.shape != h.shape[:2]:
            raise ValueError(
                f"targets: shape {tuple(targets.shape)} does not match input_ids {tuple(h.shape[:2])}"
            )
        targets = targets.to(h.device).flatten()
        if torch.is_autocast_enabled(h.device.type) or torch.compiler.is_compiling():
            # Under autocast the head runs in reduced precision and the loss in
            # float32. torch.compile traces the plain route as one graph and
            # fuses it, where the chunked loop would break the graph.
            logits = self.lm_head(h)
            return F.cross_entropy(logits.float().flatten(0, 1), targets, ignore_index=IGNORE_INDEX), logits
        return linear_cross_entropy(h.flatten(0, 1), self.lm_head.weight, targets), None
