"""GPT-2: learned positions, pre-norm LayerNorm, tanh-GELU FFN, biases everywhere.

GPT-2 stores its projections as Conv1D with weights laid out (in, out), so
every matrix is transposed on the way in and out. Its fused ``c_attn`` is
already [q; k; v] along the output dimension, as blocklab's ``qkv`` is.
"""

from __future__ import annotations

from typing import Any

from blocklab.config import ModelConfig
from blocklab.hf.llama import has_output_head
from blocklab.hf.mapping import (
    Family,
    Rule,
    activation_from_hf,
    activation_to_hf,
    build_config,
    copy,
    reject,
    required,
    transposed,
)


def _rules(config: ModelConfig) -> list[Rule]:
    rules = [copy("embed.weight", "wte.weight"), copy("position.weight", "wpe.weight")]
    for index in range(config.n_layers):
        hf, block = f"h.{index}", f"blocks.{index}"
        pairs = (
            ("attn.qkv", "attn.c_attn"), ("attn.out", "attn.c_proj"),
            ("ffn.up", "mlp.c_fc"), ("ffn.down", "mlp.c_proj"),
        )
        for target, source in pairs:
            rules.append(transposed(f"{block}.{target}.weight", f"{hf}.{source}.weight"))
            rules.append(copy(f"{block}.{target}.bias", f"{hf}.{source}.bias"))
        for target, source in (("attn_norm", "ln_1"), ("ffn_norm", "ln_2")):
            rules.append(copy(f"{block}.{target}.weight", f"{hf}.{source}.weight"))
            rules.append(copy(f"{block}.{target}.bias", f"{hf}.{source}.bias"))
    rules.append(copy("final_norm.weight", "ln_f.weight"))
    rules.append(copy("final_norm.bias", "ln_f.bias"))
    if config.lm_head and not config.tie_embeddings:
        rules.append(copy("lm_head.weight", "lm_head.weight", in_base=False))
    return rules


def _from_hf(hf: dict[str, Any], names: set[str]) -> ModelConfig:
    family = "gpt2"
    if hf.get("scale_attn_by_inverse_layer_idx"):
        reject(family, "scale_attn_by_inverse_layer_idx", True,
               "blocklab uses the same score scale in every layer")
    if hf.get("add_cross_attention"):
        reject(family, "add_cross_attention", True, "blocklab has no cross-attention")
    d_model = required(hf, "n_embd", family)
    return build_config(
        family,
        vocab_size=required(hf, "vocab_size", family),
        d_model=d_model,
        n_layers=required(hf, "n_layer", family),
        n_heads=required(hf, "n_head", family),
        d_ff=hf.get("n_inner") or 4 * d_model,
        max_seq_len=required(hf, "n_positions", family),
        position="learned", norm="layernorm", residual="pre",
        ffn=activation_from_hf(hf.get("activation_function", "gelu_new"), False, family,
                               "activation_function"),
        causal=True,
        norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
        norm_bias=True, qkv_bias=True, out_bias=True, ffn_bias=True,
        attn_scale=None if hf.get("scale_attn_weights", True) else 1.0,
        lm_head=has_output_head(hf, names),
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
    )


def _to_hf(config: ModelConfig) -> dict[str, Any]:
    return {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel" if config.lm_head else "GPT2Model"],
        "vocab_size": config.vocab_size,
        "n_embd": config.d_model,
        "n_layer": config.n_layers,
        "n_head": config.n_heads,
        "n_inner": config.ffn_dim,
        "n_positions": config.max_seq_len,
        "activation_function": activation_to_hf(config.ffn, False, "gpt2"),
        "layer_norm_epsilon": config.norm_eps,
        # Only the default 1 / sqrt(D) or no scaling exist in GPT-2; another
        # attn_scale fails the round-trip check.
        "scale_attn_weights": config.attn_scale != 1.0,
        "tie_word_embeddings": config.tie_embeddings if config.lm_head else False,
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.attn_dropout,
    }


def _tied_head(config: ModelConfig) -> set[str]:
    return {"lm_head.weight"} if config.lm_head and config.tie_embeddings else set()


GPT2 = Family(
    "gpt2", "transformer.", _from_hf, _to_hf, _rules,
    # Old checkpoints store the causal-mask buffers of each attention layer.
    ignored_suffixes=(".attn.bias", ".attn.masked_bias"),
    optional_sources=_tied_head,
)
