"""The ``blocklab inspect`` command: describe a Hugging Face checkpoint in blocklab terms.

It reads config.json and the safetensors headers only, so it is fast on
large checkpoints and loads no weights.
"""

from __future__ import annotations

import argparse
import json

from blocklab.config import ModelConfig
from blocklab.hf import CheckpointInfo, inspect


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="checkpoint directory with config.json and safetensors weights")
    parser.add_argument("--json", action="store_true",
                        help="print the description and the blocklab ModelConfig as JSON")


def _position(config: ModelConfig) -> str:
    if config.position == "rope":
        text = f"rope (theta {config.rope.theta:g}"
        if config.rope.partial_fraction != 1.0:
            text += f", rotating {config.rotary_dim} of {config.dim_per_head} dims"
        scaling = config.rope.scaling
        if scaling is not None:
            text += f", {scaling.type} scaling x{scaling.factor:g}"
            if scaling.original_max_position_embeddings is not None:
                text += f" from {scaling.original_max_position_embeddings} tokens"
        return text + ")"
    if config.position == "learned":
        return f"learned ({config.max_seq_len} positions)"
    if config.position == "t5":
        return f"t5 buckets ({config.t5_num_buckets} buckets, max distance {config.t5_max_distance})"
    return config.position


def _norm(config: ModelConfig) -> str:
    details = [f"eps {config.norm_eps:g}"]
    if config.rmsnorm_unit_offset and config.norm == "rmsnorm":
        details.append("gain 1 + g")
    if config.use_norm_bias:
        details.append("with bias")
    if config.embed_norm:
        details.append("also after the embeddings")
    return f"{config.norm} ({', '.join(details)})"


def _heads(config: ModelConfig) -> str:
    kv = config.kv_heads
    if kv == config.n_heads:
        kind = "multi-head"
    elif kv == 1:
        kind = "multi-query"
    else:
        kind = "grouped-query"
    return f"{config.n_heads} query, {kv} key/value ({kind})"


def _head(config: ModelConfig) -> str:
    parts = []
    if config.lm_head:
        parts.append("language-model head" + (" tied to the embeddings" if config.tie_embeddings else ""))
    if config.pooler:
        parts.append("tanh pooler")
    return ", ".join(parts) or "none (hidden states only)"


def describe(info: CheckpointInfo) -> list[tuple[str, str]]:
    """Return the (label, value) rows that ``inspect`` prints."""
    config = info.config
    architecture = ", ".join(info.architectures) or "not named"
    rows = [
        ("checkpoint", str(info.path)),
        ("family", f"{info.family} ({architecture})"),
        ("kind", "causal language model" if config.causal else "bidirectional encoder"),
        ("position", _position(config)),
        ("norm", _norm(config)),
        ("residual", config.residual + ("-norm" if config.residual != "sandwich" else "")),
        ("ffn", f"{config.ffn}, hidden {config.ffn_dim}"),
        ("layers", str(config.n_layers)),
        ("d_model", str(config.d_model)),
        ("heads", _heads(config)),
        ("head dim", str(config.dim_per_head)),
        ("vocab", str(config.vocab_size)),
        ("output", _head(config)),
        ("parameters", f"{info.parameter_count:,}"),
        ("dtype", info.dtype),
        ("weights", f"{', '.join(info.weight_files)} ({info.tensor_count} tensors)"),
    ]
    if config.type_vocab_size:
        rows.insert(12, ("token types", str(config.type_vocab_size)))
    if config.scale_embeddings:
        rows.insert(4, ("embeddings", "scaled by sqrt(d_model)"))
    if config.attn_scale is not None:
        rows.insert(4, ("score scale", f"{config.attn_scale:g}"))
    if info.skipped:
        rows.append(("skipped", f"{len(info.skipped)} tensors blocklab does not model "
                                f"(first: {info.skipped[0]})"))
    return rows


def run_command(args: argparse.Namespace) -> int:
    info = inspect(args.path)
    if args.json:
        data = {
            "path": str(info.path), "family": info.family, "architectures": info.architectures,
            "dtype": info.dtype, "parameters": info.parameter_count,
            "weight_files": info.weight_files, "tensors": info.tensor_count,
            "skipped": info.skipped, "config": info.config.to_dict(),
        }
        print(json.dumps(data, indent=2))
        return 0
    rows = describe(info)
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")
    return 0
