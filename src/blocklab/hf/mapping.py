"""Weight-name rules between blocklab and Hugging Face, and the family interface.

A ``Rule`` ties one blocklab tensor to the Hugging Face tensors it is made of,
with a pair of inverse functions: ``join`` builds the blocklab tensor from the
Hugging Face ones and ``split`` goes back. Loading and saving both run from
the same list of rules, so the two directions cannot drift apart. The
expected Hugging Face shapes come from running ``split`` on a meta tensor of
the blocklab shape.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from blocklab.config import ModelConfig, RopeConfig, RopeScaling
from blocklab.errors import UsageError

Join = Callable[[list[torch.Tensor]], torch.Tensor]
Split = Callable[[torch.Tensor], list[torch.Tensor]]


def _only(tensors: list[torch.Tensor]) -> torch.Tensor:
    return tensors[0]


def _wrap(tensor: torch.Tensor) -> list[torch.Tensor]:
    return [tensor]


@dataclass(frozen=True)
class Rule:
    """One blocklab tensor and the Hugging Face tensors it is built from.

    Attributes:
        target: the blocklab state-dict name.
        sources: the Hugging Face names, without the base-model prefix.
        join: Hugging Face tensors -> the blocklab tensor.
        split: the blocklab tensor -> Hugging Face tensors, in ``sources`` order.
        in_base: the names live under the base-model prefix ("model.",
            "transformer.", ...) in a checkpoint with an output head; False for
            the head itself.
    """

    target: str
    sources: tuple[str, ...]
    join: Join = _only
    split: Split = _wrap
    in_base: bool = True


def copy(target: str, source: str, *, in_base: bool = True) -> Rule:
    return Rule(target, (source,), in_base=in_base)


def transposed(target: str, source: str) -> Rule:
    """GPT-2's Conv1D stores (in, out); a Linear stores (out, in)."""
    return Rule(target, (source,), join=lambda t: t[0].t(), split=lambda t: [t.t()])


def stacked(target: str, sources: tuple[str, ...], sizes: tuple[int, ...]) -> Rule:
    """Concatenate along dim 0, as the fused qkv projection is [q; k; v]."""
    return Rule(
        target, sources,
        join=lambda tensors: torch.cat(tensors, dim=0),
        split=lambda tensor: list(tensor.split(sizes, dim=0)),
    )


def head_interleaved_qkv(target: str, source: str, heads: int, head_dim: int) -> Rule:
    """BLOOM's fused projection, laid out per head as (H, 3, D); blocklab's is (3, H, D)."""

    def join(tensors: list[torch.Tensor]) -> torch.Tensor:
        fused = tensors[0]
        rest = fused.shape[1:]
        grouped = fused.reshape(heads, 3, head_dim, *rest).transpose(0, 1)  # (3, H, D, ...)
        return grouped.reshape(3 * heads * head_dim, *rest)

    def split(tensor: torch.Tensor) -> list[torch.Tensor]:
        rest = tensor.shape[1:]
        grouped = tensor.reshape(3, heads, head_dim, *rest).transpose(0, 1)  # (H, 3, D, ...)
        return [grouped.reshape(3 * heads * head_dim, *rest)]

    return Rule(target, (source,), join=join, split=split)


def linear(target: str, source: str, bias: bool) -> list[Rule]:
    """Rules for a Linear's weight and, when present, its bias."""
    rules = [copy(f"{target}.weight", f"{source}.weight")]
    if bias:
        rules.append(copy(f"{target}.bias", f"{source}.bias"))
    return rules


def qkv_sizes(config: ModelConfig) -> tuple[int, int, int]:
    query = config.n_heads * config.dim_per_head
    key = config.kv_heads * config.dim_per_head
    return query, key, key


@dataclass(frozen=True)
class Family:
    """The mapping of one Hugging Face ``model_type`` onto blocklab.

    Attributes:
        name: the ``model_type`` in config.json.
        base_prefix: the prefix of base-model tensors in checkpoints with a head
            ("model.", "transformer.", "bert."), or "" when there is none.
        config_from_hf: (config.json dict, tensor names without the prefix) ->
            ModelConfig. Raises UsageError for settings blocklab cannot express.
        config_to_hf: ModelConfig -> config.json dict. Raises UsageError for
            settings the family cannot express and a round trip cannot show.
        rules: ModelConfig -> the weight rules.
        skipped_prefixes: tensors under these names are known parts blocklab
            does not model (BERT's pretraining heads, T5's decoder); a load
            skips them with a warning.
        ignored_suffixes: obsolete buffers that old checkpoints carry.
        optional_sources: tensors that may be present and are redundant
            (a tied head stored twice); a load accepts and ignores them.
    """

    name: str
    base_prefix: str
    config_from_hf: Callable[[dict[str, Any], set[str]], ModelConfig]
    config_to_hf: Callable[[ModelConfig], dict[str, Any]]
    rules: Callable[[ModelConfig], list[Rule]]
    skipped_prefixes: tuple[str, ...] = ()
    ignored_suffixes: tuple[str, ...] = ()
    optional_sources: Callable[[ModelConfig], set[str]] = field(default=lambda config: set())


# Config helpers shared by the families -------------------------------------


def required(hf: dict[str, Any], key: str, family: str) -> Any:
    """Return ``hf[key]``, or raise UsageError naming the missing config.json field."""
    if key not in hf or hf[key] is None:
        raise UsageError(f"config.json of a {family} checkpoint is missing {key!r}")
    return hf[key]


def reject(family: str, key: str, value: Any, reason: str) -> None:
    raise UsageError(f"{family} checkpoint: {key}={value!r} is not supported; {reason}")


def build_config(family: str, **fields: Any) -> ModelConfig:
    """Build a ModelConfig and turn a validation error into a UsageError."""
    try:
        return ModelConfig(**fields)
    except ValueError as error:
        raise UsageError(f"{family} checkpoint maps to an invalid blocklab config: {error}") from error


# Activation names as transformers' ACT2FN spells them -> blocklab plain FFNs.
PLAIN_FROM_HF = {
    "relu": "relu",
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "silu": "silu",
    "swish": "silu",
}
# The same activations applied to the gate of a GLU FFN.
GATED_FROM_HF = {
    "relu": "reglu",
    "gelu": "geglu",
    "gelu_new": "geglu_tanh",
    "gelu_pytorch_tanh": "geglu_tanh",
    "gelu_fast": "geglu_tanh",
    "silu": "swiglu",
    "swish": "swiglu",
}
PLAIN_TO_HF = {"relu": "relu", "gelu": "gelu", "gelu_tanh": "gelu_new", "silu": "silu"}
GATED_TO_HF = {"reglu": "relu", "geglu": "gelu", "geglu_tanh": "gelu_pytorch_tanh",
               "swiglu": "silu"}


def activation_from_hf(name: Any, gated: bool, family: str, key: str) -> str:
    table = GATED_FROM_HF if gated else PLAIN_FROM_HF
    if name not in table:
        reject(family, key, name, "supported activations are " + ", ".join(table))
    return table[name]


def activation_to_hf(ffn: str, gated: bool, family: str) -> str:
    table = GATED_TO_HF if gated else PLAIN_TO_HF
    if ffn not in table:
        kind = "gated" if gated else "plain"
        raise UsageError(
            f"ffn={ffn!r} cannot be saved as {family}, which needs a {kind} FFN "
            f"({', '.join(table)})"
        )
    return table[ffn]


# RoPE ------------------------------------------------------------------------

ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "llama3")


def rope_from_hf(hf: dict[str, Any], family: str) -> RopeConfig:
    """Read RoPE settings from ``rope_parameters`` (transformers 5) or the older
    top-level ``rope_theta`` and ``rope_scaling``.

    transformers' "dynamic" type treats ``max_position_embeddings`` as the
    original length, so blocklab's ``original_max_position_embeddings`` is set
    from it.
    """
    params = hf.get("rope_parameters")
    if not isinstance(params, dict) or not params:
        params = dict(hf.get("rope_scaling") or {})
    params = dict(params)
    if any(isinstance(value, dict) for value in params.values()):
        reject(family, "rope_parameters", "per-layer-type settings",
               "blocklab uses one RoPE setting for every layer")
    theta = float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
    partial = float(params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0)))
    kind = params.get("rope_type", params.get("type", "default"))
    max_positions = required(hf, "max_position_embeddings", family)

    scaling = None
    if kind == "linear":
        scaling = RopeScaling(type="linear", factor=float(params["factor"]))
    elif kind == "dynamic":
        scaling = RopeScaling(type="dynamic", factor=float(params["factor"]),
                              original_max_position_embeddings=max_positions)
    elif kind == "yarn":
        original = params.get("original_max_position_embeddings") or max_positions
        factor = params.get("factor") or max_positions / original
        scaling = RopeScaling(
            type="yarn", factor=float(factor), original_max_position_embeddings=original,
            beta_fast=float(params.get("beta_fast") or 32.0),
            beta_slow=float(params.get("beta_slow") or 1.0),
            attention_factor=params.get("attention_factor"),
            mscale=params.get("mscale"), mscale_all_dim=params.get("mscale_all_dim"),
            truncate=bool(params.get("truncate", True)),
        )
    elif kind == "llama3":
        scaling = RopeScaling(
            type="llama3", factor=float(params["factor"]),
            original_max_position_embeddings=params["original_max_position_embeddings"],
            low_freq_factor=float(params["low_freq_factor"]),
            high_freq_factor=float(params["high_freq_factor"]),
        )
    elif kind != "default":
        reject(family, "rope_type", kind, "supported types are " + ", ".join(ROPE_TYPES))
    return RopeConfig(theta=theta, partial_fraction=partial, scaling=scaling)


def rope_to_hf(rope: RopeConfig) -> dict[str, Any]:
    """Write ``rope_parameters`` as transformers 5 reads it."""
    params: dict[str, Any] = {"rope_theta": rope.theta, "rope_type": "default"}
    if rope.partial_fraction != 1.0:
        params["partial_rotary_factor"] = rope.partial_fraction
    scaling = rope.scaling
    if scaling is None:
        return params
    params["rope_type"] = scaling.type
    params["factor"] = scaling.factor
    if scaling.type == "ntk":
        raise UsageError(
            "rope.scaling.type='ntk' has no transformers equivalent; use 'dynamic', "
            "'linear', 'yarn' or 'llama3' to save a Hugging Face checkpoint"
        )
    if scaling.type == "yarn":
        params.update(
            original_max_position_embeddings=scaling.original_max_position_embeddings,
            beta_fast=scaling.beta_fast, beta_slow=scaling.beta_slow,
            truncate=scaling.truncate,
        )
        for name in ("attention_factor", "mscale", "mscale_all_dim"):
            if getattr(scaling, name) is not None:
                params[name] = getattr(scaling, name)
    elif scaling.type == "llama3":
        params.update(
            original_max_position_embeddings=scaling.original_max_position_embeddings,
            low_freq_factor=scaling.low_freq_factor, high_freq_factor=scaling.high_freq_factor,
        )
    return params


# Round-trip comparison -------------------------------------------------------


def canonical(config: ModelConfig) -> dict[str, Any]:
    """Flatten a config to the fields that change what the model computes.

    Defaults that resolve to the same value (head_dim None vs d_model / n_heads)
    compare equal, and fields that only matter for another setting (T5 buckets
    without T5 positions) or only for training (dropout, init) are left out.
    """
    data = config.to_dict()
    for name in ("dropout", "attn_dropout", "init_std", "ffn_multiple_of", "rope"):
        data.pop(name)
    data.update(
        d_ff=config.ffn_dim, head_dim=config.dim_per_head, n_kv_heads=config.kv_heads,
        norm_bias=config.use_norm_bias, final_norm=config.use_final_norm,
    )
    if config.position == "rope":
        rope = config.rope
        data["rope.theta"] = rope.theta
        data["rope.interleaved"] = rope.interleaved
        data["rope.partial_fraction"] = rope.partial_fraction
        if rope.scaling is not None:
            for key, value in rope.scaling.__dict__.items():
                data[f"rope.scaling.{key}"] = value
    if config.position not in ("rope", "learned"):
        data.pop("max_seq_len")
    if config.position != "t5":
        data.pop("t5_num_buckets")
        data.pop("t5_max_distance")
    if config.position != "relative":
        data.pop("relative_max_distance")
    if config.norm != "rmsnorm":
        data.pop("rmsnorm_unit_offset")
        data.pop("rmsnorm_cast")
    if not config.lm_head:
        data.pop("tie_embeddings")
    return data


def differences(config: ModelConfig, expressed: ModelConfig) -> list[tuple[str, Any, Any]]:
    """Return (field, value in ``config``, value in ``expressed``) for each field that differs."""
    wanted, got = canonical(config), canonical(expressed)
    keys = list(wanted) + [key for key in got if key not in wanted]
    found = [(key, wanted.get(key), got.get(key)) for key in keys if wanted.get(key) != got.get(key)]
    # A field present on one side only (tie_embeddings without a head) follows
    # from another difference (lm_head), so the cause is listed first.
    return sorted(found, key=lambda item: item[0] not in wanted or item[0] not in got)
