"""LLaMA and its close relatives: Mistral, Qwen2 and Gemma.

All four are pre-norm RMSNorm decoders with RoPE (split-halves layout), a
gated FFN and separate q/k/v/o projections under ``model.layers.N``. They
differ in biases (Qwen2 has them on q, k and v), in Gemma's unit-offset
RMSNorm, tanh-GELU gate and sqrt(C)-scaled embeddings, and in defaults.
"""

from __future__ import annotations

import logging
from typing import Any

from blocklab.config import ModelConfig
from blocklab.hf.mapping import (
    Family,
    Rule,
    activation_from_hf,
    activation_to_hf,
    build_config,
    copy,
    linear,
    qkv_sizes,
    reject,
    required,
    rope_from_hf,
    rope_to_hf,
    stacked,
)

logger = logging.getLogger(__name__)

HEAD_ARCHITECTURE_SUFFIXES = ("ForCausalLM", "LMHeadModel")


def has_output_head(hf: dict[str, Any], names: set[str]) -> bool:
    """Tell a checkpoint with a language-model head from a bare base model."""
    if "lm_head.weight" in names:
        return True
    architectures = hf.get("architectures") or []
    return any(str(name).endswith(HEAD_ARCHITECTURE_SUFFIXES) for name in architectures)


def decoder_rules(config: ModelConfig) -> list[Rule]:
    """Weight rules for the ``model.layers.N.self_attn / mlp`` layout."""
    rules = [copy("embed.weight", "embed_tokens.weight")]
    sizes = qkv_sizes(config)
    for index in range(config.n_layers):
        hf, block = f"layers.{index}", f"blocks.{index}"
        attention = f"{hf}.self_attn"
        for kind in ("weight", "bias") if config.qkv_bias else ("weight",):
            sources = tuple(f"{attention}.{name}_proj.{kind}" for name in "qkv")
            rules.append(stacked(f"{block}.attn.qkv.{kind}", sources, sizes))
        rules += linear(f"{block}.attn.out", f"{attention}.o_proj", config.out_bias)
        rules += linear(f"{block}.ffn.gate", f"{hf}.mlp.gate_proj", config.ffn_bias)
        rules += linear(f"{block}.ffn.up", f"{hf}.mlp.up_proj", config.ffn_bias)
        rules += linear(f"{block}.ffn.down", f"{hf}.mlp.down_proj", config.ffn_bias)
        rules.append(copy(f"{block}.attn_norm.weight", f"{hf}.input_layernorm.weight"))
        rules.append(copy(f"{block}.ffn_norm.weight", f"{hf}.post_attention_layernorm.weight"))
    rules.append(copy("final_norm.weight", "norm.weight"))
    if config.lm_head and not config.tie_embeddings:
        rules.append(copy("lm_head.weight", "lm_head.weight", in_base=False))
    return rules


def _tied_head(config: ModelConfig) -> set[str]:
    # Some checkpoints store a tied head a second time; it adds nothing.
    return {"lm_head.weight"} if config.lm_head and config.tie_embeddings else set()


def _warn_per_layer_window(hf: dict[str, Any]) -> None:
    window = hf.get("sliding_window")
    if window is None or not hf.get("use_sliding_window", False):
        return
    layers = hf.get("num_hidden_layers", 0)
    types = hf.get("layer_types") or [
        "sliding_attention" if index >= hf.get("max_window_layers", layers) else "full_attention"
        for index in range(layers)
    ]
    if "sliding_attention" not in types:
        return
    # NOTE: Qwen2 windows only the layers from max_window_layers on, and
    # blocklab has one window for every layer, so these load without one and
    # match transformers only while a sequence fits in the window.
    logger.warning(
        "qwen2 checkpoint windows some layers (sliding_window=%d), which blocklab "
        "cannot express per layer; outputs match transformers only for sequences of "
        "at most %d tokens", window, window,
    )


def _decoder_config(
    family: str, hf: dict[str, Any], names: set[str], *, qkv_bias: bool, out_bias: bool,
    ffn_bias: bool, tie_default: bool, gemma: bool = False, sliding_window: int | None = None,
) -> ModelConfig:
    d_model = required(hf, "hidden_size", family)
    n_heads = required(hf, "num_attention_heads", family)
    head_dim = hf.get("head_dim") or d_model // n_heads
    activation = hf.get("hidden_act", hf.get("hidden_activation", "silu"))
    if hf.get("pretraining_tp", 1) not in (None, 1):
        logger.info("%s: pretraining_tp=%s changes nothing in inference; ignored",
                    family, hf["pretraining_tp"])
    fields: dict[str, Any] = dict(
        vocab_size=required(hf, "vocab_size", family),
        d_model=d_model,
        n_layers=required(hf, "num_hidden_layers", family),
        n_heads=n_heads,
        n_kv_heads=hf.get("num_key_value_heads") or n_heads,
        head_dim=head_dim if head_dim * n_heads != d_model else None,
        d_ff=required(hf, "intermediate_size", family),
        max_seq_len=required(hf, "max_position_embeddings", family),
        position="rope", norm="rmsnorm", residual="pre",
        ffn=activation_from_hf(activation, True, family, "hidden_act"),
        causal=True,
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        qkv_bias=qkv_bias, out_bias=out_bias, ffn_bias=ffn_bias,
        rope=rope_from_hf(hf, family),
        sliding_window=sliding_window,
        lm_head=has_output_head(hf, names),
        tie_embeddings=bool(hf.get("tie_word_embeddings", tie_default)),
    )
    if gemma:
        fields.update(rmsnorm_unit_offset=True, rmsnorm_cast="scale_then_cast",
                      scale_embeddings=True)
    return build_config(family, **fields)


def _decoder_hf(config: ModelConfig, model_type: str, architecture: str) -> dict[str, Any]:
    rope = rope_to_hf(config.rope)
    # transformers 5 reads rope_parameters; releases before it read rope_theta
    # and rope_scaling, and would silently fall back to theta 10000 without them.
    legacy_scaling = {key: value for key, value in rope.items() if key != "rope_theta"}
    return {
        "rope_theta": config.rope.theta,
        "rope_scaling": legacy_scaling if config.rope.scaling is not None else None,
        "model_type": model_type,
        "architectures": [architecture + ("ForCausalLM" if config.lm_head else "Model")],
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.kv_heads,
        "head_dim": config.dim_per_head,
        "intermediate_size": config.ffn_dim,
        "max_position_embeddings": config.max_seq_len,
        "rms_norm_eps": config.norm_eps,
        "hidden_act": activation_to_hf(config.ffn, True, model_type),
        "rope_parameters": rope,
        "tie_word_embeddings": config.tie_embeddings if config.lm_head else False,
        "attention_dropout": config.attn_dropout,
    }


# LLaMA -------------------------------------------------------------------------


def _llama_from_hf(hf: dict[str, Any], names: set[str]) -> ModelConfig:
    bias = bool(hf.get("attention_bias", False))
    return _decoder_config("llama", hf, names, qkv_bias=bias, out_bias=bias,
                           ffn_bias=bool(hf.get("mlp_bias", False)), tie_default=False)


def _llama_to_hf(config: ModelConfig) -> dict[str, Any]:
    hf = _decoder_hf(config, "llama", "Llama")
    hf.update(attention_bias=config.qkv_bias, mlp_bias=config.ffn_bias)
    return hf


# Mistral -----------------------------------------------------------------------


def _mistral_from_hf(hf: dict[str, Any], names: set[str]) -> ModelConfig:
    return _decoder_config("mistral", hf, names, qkv_bias=False, out_bias=False,
                           ffn_bias=False, tie_default=False,
                           sliding_window=hf.get("sliding_window"))


def _mistral_to_hf(config: ModelConfig) -> dict[str, Any]:
    hf = _decoder_hf(config, "mistral", "Mistral")
    hf["sliding_window"] = config.sliding_window
    return hf


# Qwen2 -------------------------------------------------------------------------


def _qwen2_from_hf(hf: dict[str, Any], names: set[str]) -> ModelConfig:
    _warn_per_layer_window(hf)
    return _decoder_config("qwen2", hf, names, qkv_bias=True, out_bias=False,
                           ffn_bias=False, tie_default=False)


def _qwen2_to_hf(config: ModelConfig) -> dict[str, Any]:
    hf = _decoder_hf(config, "qwen2", "Qwen2")
    hf.update(use_sliding_window=False, sliding_window=None)
    return hf


# Gemma -------------------------------------------------------------------------


def _gemma_from_hf(hf: dict[str, Any], names: set[str]) -> ModelConfig:
    if hf.get("use_bidirectional_attention"):
        reject("gemma", "use_bidirectional_attention", True,
               "blocklab loads Gemma as a causal language model")
    bias = bool(hf.get("attention_bias", False))
    return _decoder_config("gemma", hf, names, qkv_bias=bias, out_bias=bias,
                           ffn_bias=False, tie_default=True, gemma=True)


def _gemma_to_hf(config: ModelConfig) -> dict[str, Any]:
    hf = _decoder_hf(config, "gemma", "Gemma")
    hf["attention_bias"] = config.qkv_bias
    return hf


_IGNORED = (".rotary_emb.inv_freq",)

LLAMA = Family("llama", "model.", _llama_from_hf, _llama_to_hf, decoder_rules,
               ignored_suffixes=_IGNORED, optional_sources=_tied_head)
MISTRAL = Family("mistral", "model.", _mistral_from_hf, _mistral_to_hf, decoder_rules,
                 ignored_suffixes=_IGNORED, optional_sources=_tied_head)
QWEN2 = Family("qwen2", "model.", _qwen2_from_hf, _qwen2_to_hf, decoder_rules,
               ignored_suffixes=_IGNORED, optional_sources=_tied_head)
GEMMA = Family("gemma", "model.", _gemma_from_hf, _gemma_to_hf, decoder_rules,
               ignored_suffixes=_IGNORED, optional_sources=_tied_head)
