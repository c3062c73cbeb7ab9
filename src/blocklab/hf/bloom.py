"""BLOOM: ALiBi, an embedding LayerNorm, pre-norm LayerNorm and tanh-GELU FFN.

BLOOM fuses q, k and v per head: its ``query_key_value`` rows are laid out
(H, 3, D), where blocklab's ``qkv`` rows are (3, H, D), so the rows are
regrouped on the way in and out. transformers builds BLOOM's ALiBi bias from
the key positions alone; within a causal row that differs from blocklab's
-slope * (i - j) by a constant, which softmax ignores.
"""

from __future__ import annotations

from typing import Any

from blocklab.config import ModelConfig
from blocklab.hf.llama import has_output_head
from blocklab.hf.mapping import (
    Family,
    Rule,
    build_config,
    copy,
    head_interleaved_qkv,
    linear,
    reject,
    required,
)


def _rules(config: ModelConfig) -> list[Rule]:
    rules = [
        copy("embed.weight", "word_embeddings.weight"),
        copy("embed_norm.weight", "word_embeddings_layernorm.weight"),
        copy("embed_norm.bias", "word_embeddings_layernorm.bias"),
    ]
    for index in range(config.n_layers):
        hf, block = f"h.{index}", f"blocks.{index}"
        for kind in ("weight", "bias"):
            rules.append(head_interleaved_qkv(
                f"{block}.attn.qkv.{kind}", f"{hf}.self_attention.query_key_value.{kind}",
                config.n_heads, config.dim_per_head,
            ))
        rules += linear(f"{block}.attn.out", f"{hf}.self_attention.dense", True)
        rules += linear(f"{block}.attn_norm", f"{hf}.input_layernorm", True)
        rules += linear(f"{block}.ffn_norm", f"{hf}.post_attention_layernorm", True)
        rules += linear(f"{block}.ffn.up", f"{hf}.mlp.dense_h_to_4h", True)
        rules += linear(f"{block}.ffn.down", f"{hf}.mlp.dense_4h_to_h", True)
    rules += linear("final_norm", "ln_f", True)
    if config.lm_head and not config.tie_embeddings:
        rules.append(copy("lm_head.weight", "lm_head.weight", in_base=False))
    return rules


def _from_hf(hf: dict[str, Any], names: set[str]) -> ModelConfig:
    family = "bloom"
    if hf.get("apply_residual_connection_post_layernorm"):
        reject(family, "apply_residual_connection_post_layernorm", True,
               "blocklab's pre-norm residual adds the block input, not its normalized form")
    # Early BLOOM configs spell the width n_embed.
    d_model = hf.get("hidden_size") or hf.get("n_embed") or required(hf, "hidden_size", family)
    return build_config(
        family,
        vocab_size=required(hf, "vocab_size", family),
        d_model=d_model,
        n_layers=required(hf, "n_layer", family),
        n_heads=required(hf, "n_head", family),
        d_ff=4 * d_model,
        position="alibi", norm="layernorm", residual="pre", ffn="gelu_tanh",
        causal=True,
        norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
        norm_bias=True, qkv_bias=True, out_bias=True, ffn_bias=True,
        embed_norm=True,
        lm_head=has_output_head(hf, names),
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
    )


def _to_hf(config: ModelConfig) -> dict[str, Any]:
    return {
        "model_type": "bloom",
        "architectures": ["BloomForCausalLM" if config.lm_head else "BloomModel"],
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "n_layer": config.n_layers,
        "n_head": config.n_heads,
        "layer_norm_epsilon": config.norm_eps,
        "apply_residual_connection_post_layernorm": False,
        "tie_word_embeddings": config.tie_embeddings if config.lm_head else False,
        "hidden_dropout": config.dropout,
        "attention_dropout": config.attn_dropout,
    }


def _tied_head(config: ModelConfig) -> set[str]:
    return {"lm_head.weight"} if config.lm_head and config.tie_embeddings else set()


BLOOM = Family("bloom", "transformer.", _from_hf, _to_hf, _rules,
               optional_sources=_tied_head)
