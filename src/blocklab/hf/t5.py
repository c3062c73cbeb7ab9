"""T5's encoder: a bucketed relative bias, unscaled scores, RMS-style norm.

blocklab rebuilds ``T5EncoderModel``. The relative-position bias lives in the
first layer only and every layer reuses it, which is what blocklab's shared
``score_bias`` does. Scores are not divided by sqrt(D) (``attn_scale=1.0``).
The FFN is plain ReLU (``wi``, ``wo``) or gated (``wi_0`` is the activated
gate, ``wi_1`` the linear half). A full T5 checkpoint loads too: its decoder
and output head are skipped with a warning.
"""

from __future__ import annotations

from typing import Any

from blocklab.config import ModelConfig
from blocklab.errors import UsageError
from blocklab.hf.mapping import (
    Family,
    Rule,
    activation_from_hf,
    activation_to_hf,
    build_config,
    copy,
    reject,
    required,
    stacked,
)


def _rules(config: ModelConfig) -> list[Rule]:
    rules = [
        copy("embed.weight", "shared.weight"),
        copy("score_bias.weight",
             "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"),
    ]
    inner = config.n_heads * config.dim_per_head
    for index in range(config.n_layers):
        hf, block = f"encoder.block.{index}", f"blocks.{index}"
        attention = f"{hf}.layer.0.SelfAttention"
        sources = tuple(f"{attention}.{name}.weight" for name in "qkv")
        rules.append(stacked(f"{block}.attn.qkv.weight", sources, (inner,) * 3))
        rules.append(copy(f"{block}.attn.out.weight", f"{attention}.o.weight"))
        rules.append(copy(f"{block}.attn_norm.weight", f"{hf}.layer.0.layer_norm.weight"))
        ffn = f"{hf}.layer.1.DenseReluDense"
        if config.gated:
            rules.append(copy(f"{block}.ffn.gate.weight", f"{ffn}.wi_0.weight"))
            rules.append(copy(f"{block}.ffn.up.weight", f"{ffn}.wi_1.weight"))
        else:
            rules.append(copy(f"{block}.ffn.up.weight", f"{ffn}.wi.weight"))
        rules.append(copy(f"{block}.ffn.down.weight", f"{ffn}.wo.weight"))
        rules.append(copy(f"{block}.ffn_norm.weight", f"{hf}.layer.1.layer_norm.weight"))
    rules.append(copy("final_norm.weight", "encoder.final_layer_norm.weight"))
    return rules


def _activation(hf: dict[str, Any]) -> str:
    # transformers reads feed_forward_proj as "ACT" or "gated-ACT", and its
    # "gated-gelu" means the tanh approximation.
    projection = str(hf.get("feed_forward_proj", "relu"))
    parts = projection.split("-")
    gated = parts[0] == "gated"
    if len(parts) > 2 or (len(parts) == 2 and not gated):
        reject("t5", "feed_forward_proj", projection, "expected 'ACT' or 'gated-ACT'")
    name = "gelu_new" if projection == "gated-gelu" else parts[-1]
    return activation_from_hf(name, gated, "t5", "feed_forward_proj")


def _from_hf(hf: dict[str, Any], names: set[str]) -> ModelConfig:
    family = "t5"
    if hf.get("is_decoder"):
        reject(family, "is_decoder", True, "blocklab loads the T5 encoder only")
    n_heads = required(hf, "num_heads", family)
    d_model = required(hf, "d_model", family)
    head_dim = required(hf, "d_kv", family)
    return build_config(
        family,
        vocab_size=required(hf, "vocab_size", family),
        d_model=d_model,
        n_layers=required(hf, "num_layers", family),
        n_heads=n_heads,
        head_dim=head_dim if head_dim * n_heads != d_model else None,
        d_ff=required(hf, "d_ff", family),
        position="t5", norm="rmsnorm", residual="pre", ffn=_activation(hf),
        causal=False,
        norm_eps=float(hf.get("layer_norm_epsilon", 1e-6)),
        attn_scale=1.0,
        lm_head=False,
        t5_num_buckets=hf.get("relative_attention_num_buckets", 32),
        t5_max_distance=hf.get("relative_attention_max_distance", 128),
    )


def _to_hf(config: ModelConfig) -> dict[str, Any]:
    activation = activation_to_hf(config.ffn, config.gated, "t5")
    if config.gated:
        projection = "gated-gelu" if activation == "gelu_pytorch_tanh" else f"gated-{activation}"
        if activation == "gelu":
            raise UsageError(
                "ffn='geglu' (exact GELU gate) cannot be saved as t5, whose 'gated-gelu' "
                "is the tanh approximation; use ffn='geglu_tanh'"
            )
    else:
        projection = activation
    return {
        "model_type": "t5",
        "architectures": ["T5EncoderModel"],
        "vocab_size": config.vocab_size,
        "d_model": config.d_model,
        "d_kv": config.dim_per_head,
        "d_ff": config.ffn_dim,
        "num_layers": config.n_layers,
        "num_heads": config.n_heads,
        "feed_forward_proj": projection,
        "relative_attention_num_buckets": config.t5_num_buckets,
        "relative_attention_max_distance": config.t5_max_distance,
        "layer_norm_epsilon": config.norm_eps,
        "dropout_rate": config.dropout,
        "is_encoder_decoder": False,
        "use_cache": False,
    }


T5 = Family(
    "t5", "", _from_hf, _to_hf, _rules,
    skipped_prefixes=("decoder.", "lm_head."),
    optional_sources=lambda config: {"encoder.embed_tokens.weight"},
)
