"""BERT's encoder: post-norm LayerNorm, learned positions, token types, a pooler.

blocklab rebuilds ``BertModel``: the last hidden states and, when the
checkpoint has one, the tanh pooler over the first token. The pretraining
heads of ``BertForPreTraining`` and ``BertForMaskedLM`` (``cls.*``) add a
transform that blocklab's plain output head does not have, so a load skips
them with a warning and builds the model with ``lm_head=False``.
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
    linear,
    reject,
    required,
    stacked,
)


def _rules(config: ModelConfig) -> list[Rule]:
    rules = [
        copy("embed.weight", "embeddings.word_embeddings.weight"),
        copy("position.weight", "embeddings.position_embeddings.weight"),
        copy("token_type.weight", "embeddings.token_type_embeddings.weight"),
        copy("embed_norm.weight", "embeddings.LayerNorm.weight"),
        copy("embed_norm.bias", "embeddings.LayerNorm.bias"),
    ]
    sizes = (config.d_model,) * 3
    for index in range(config.n_layers):
        hf, block = f"encoder.layer.{index}", f"blocks.{index}"
        for kind in ("weight", "bias"):
            sources = tuple(f"{hf}.attention.self.{name}.{kind}" for name in ("query", "key", "value"))
            rules.append(stacked(f"{block}.attn.qkv.{kind}", sources, sizes))
        rules += linear(f"{block}.attn.out", f"{hf}.attention.output.dense", True)
        rules += linear(f"{block}.attn_norm", f"{hf}.attention.output.LayerNorm", True)
        rules += linear(f"{block}.ffn.up", f"{hf}.intermediate.dense", True)
        rules += linear(f"{block}.ffn.down", f"{hf}.output.dense", True)
        rules += linear(f"{block}.ffn_norm", f"{hf}.output.LayerNorm", True)
    if config.pooler:
        rules += linear("pooler", "pooler.dense", True)
    return rules


def _from_hf(hf: dict[str, Any], names: set[str]) -> ModelConfig:
    family = "bert"
    position_type = hf.get("position_embedding_type", "absolute")
    if position_type != "absolute":
        reject(family, "position_embedding_type", position_type,
               "blocklab loads BERT with absolute learned positions only")
    if hf.get("is_decoder") or hf.get("add_cross_attention"):
        reject(family, "is_decoder", True, "blocklab loads BERT as a bidirectional encoder")
    d_model = required(hf, "hidden_size", family)
    return build_config(
        family,
        vocab_size=required(hf, "vocab_size", family),
        d_model=d_model,
        n_layers=required(hf, "num_hidden_layers", family),
        n_heads=required(hf, "num_attention_heads", family),
        d_ff=required(hf, "intermediate_size", family),
        max_seq_len=required(hf, "max_position_embeddings", family),
        position="learned", norm="layernorm", residual="post",
        ffn=activation_from_hf(hf.get("hidden_act", "gelu"), False, family, "hidden_act"),
        causal=False,
        norm_eps=float(hf.get("layer_norm_eps", 1e-12)),
        norm_bias=True, qkv_bias=True, out_bias=True, ffn_bias=True,
        embed_norm=True, final_norm=False,
        lm_head=False,
        type_vocab_size=required(hf, "type_vocab_size", family),
        pooler="pooler.dense.weight" in names,
    )


def _to_hf(config: ModelConfig) -> dict[str, Any]:
    if config.type_vocab_size == 0:
        raise UsageError(
            "type_vocab_size=0 cannot be saved as bert; transformers' BertModel always "
            "has a token-type table, so set type_vocab_size >= 1"
        )
    return {
        "model_type": "bert",
        "architectures": ["BertModel"],
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "intermediate_size": config.ffn_dim,
        "max_position_embeddings": config.max_seq_len,
        "type_vocab_size": config.type_vocab_size,
        "hidden_act": activation_to_hf(config.ffn, False, "bert"),
        "layer_norm_eps": config.norm_eps,
        "hidden_dropout_prob": config.dropout,
        "attention_probs_dropout_prob": config.attn_dropout,
        "position_embedding_type": "absolute",
    }


BERT = Family(
    "bert", "bert.", _from_hf, _to_hf, _rules,
    skipped_prefixes=("cls.",),
    ignored_suffixes=("embeddings.position_ids",),
)
