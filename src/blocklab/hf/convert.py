"""Load Hugging Face checkpoints into blocklab models and save them back.

A load reads ``config.json`` with ``json`` and the weights from safetensors,
maps both onto blocklab's names through the family's rules, and checks every
tensor: a missing one, an unexpected one and a wrong shape each raise a
UsageError that names it. No code from the checkpoint runs, and
``transformers`` is never imported.

A save runs the same rules backwards. Before writing, it converts the config
to the family's config.json and back. A blocklab setting that the family
cannot express (a batchnorm, a sandwich residual) then shows up as a changed
field, and the save raises an error naming it. Without the check, the
checkpoint would load in transformers and compute something else.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from blocklab.config import ModelConfig
from blocklab.errors import UsageError
from blocklab.hf.bert import BERT
from blocklab.hf.bloom import BLOOM
from blocklab.hf.checkpoint import (
    CONFIG_NAME,
    INDEX_NAME,
    WEIGHTS_NAME,
    TensorReader,
    checkpoint_directory,
    read_config,
    resolve_dtype,
    weight_files,
    write_json,
    write_safetensors,
)
from blocklab.hf.gpt2 import GPT2
from blocklab.hf.llama import GEMMA, LLAMA, MISTRAL, QWEN2
from blocklab.hf.mapping import Family, Rule, differences
from blocklab.hf.t5 import T5
from blocklab.model import Transformer

logger = logging.getLogger(__name__)

FAMILIES: dict[str, Family] = {
    family.name: family for family in (GPT2, BERT, LLAMA, MISTRAL, QWEN2, BLOOM, T5, GEMMA)
}
# The order in which ``save`` tries families when the model has no recorded
# family. The first family that expresses the config exactly is used.
MATCH_ORDER = ("gpt2", "bloom", "bert", "t5", "llama", "qwen2", "mistral", "gemma")
# config.json fields a save carries over from the checkpoint a model was loaded from.
CARRIED_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")


def family_for(hf_config: dict[str, Any]) -> Family:
    """Return the family of a config.json, or raise UsageError listing the supported ones."""
    model_type = hf_config.get("model_type")
    if model_type not in FAMILIES:
        raise UsageError(
            f"unsupported model_type {model_type!r} in config.json; blocklab loads "
            + ", ".join(sorted(FAMILIES))
        )
    return FAMILIES[model_type]


@dataclass
class CheckpointInfo:
    """A checkpoint's description in blocklab terms, read without loading the weights.

    Attributes:
        path: the checkpoint directory.
        family: the ``model_type``.
        architectures: the ``architectures`` list of config.json.
        config: the blocklab ModelConfig that the checkpoint maps to.
        dtype: the dtype the weights load in by default.
        weight_files: the safetensors file names.
        tensor_count: tensors stored in those files.
        parameter_count: parameters of the blocklab model (tied weights once).
        skipped: stored tensors that blocklab does not model (pretraining
            heads, a T5 decoder); a load skips them.
    """

    path: Path
    family: str
    architectures: list[str]
    config: ModelConfig
    dtype: str
    weight_files: list[str]
    tensor_count: int
    parameter_count: int
    skipped: list[str] = field(default_factory=list)


@dataclass
class _Opened:
    directory: Path
    hf_config: dict[str, Any]
    family: Family
    reader: TensorReader
    stored: dict[str, str]  # name without the base prefix -> name in the file
    config: ModelConfig
    skipped: list[str]
    files: list[Path]


def _strip_prefix(names: list[str], prefix: str) -> dict[str, str]:
    if not prefix or not any(name.startswith(prefix) for name in names):
        return {name: name for name in names}
    stored: dict[str, str] = {}
    for name in names:
        short = name.removeprefix(prefix)
        if short in stored:
            raise UsageError(
                f"tensors {stored[short]!r} and {name!r} both map to {short!r}; "
                "the checkpoint mixes base-model and head-model names"
            )
        stored[short] = name
    return stored


def _open(path: str | os.PathLike) -> _Opened:
    directory = checkpoint_directory(path)
    hf_config = read_config(directory)
    family = family_for(hf_config)
    files = weight_files(directory)
    reader = TensorReader(files)
    stored = _strip_prefix(reader.names(), family.base_prefix)
    skipped = sorted(name for name in stored if name.startswith(family.skipped_prefixes))
    names = set(stored) - set(skipped)
    config = family.config_from_hf(hf_config, names)
    return _Opened(directory, hf_config, family, reader, stored, config, skipped, files)


def _expected_shapes(rule: Rule, shape: torch.Size) -> list[tuple[int, ...]]:
    # Splitting a meta tensor of the blocklab shape gives the Hugging Face
    # shapes without touching any data.
    return [tuple(part.shape) for part in rule.split(torch.empty(shape, device="meta"))]


def _match_tensors(opened: _Opened, shapes: dict[str, torch.Size]) -> dict[str, list[str]]:
    """Map each blocklab tensor to its stored tensor names, checking shapes from the headers.

    ``shapes`` holds the blocklab state-dict shapes that the config implies.
    No tensor data is read.

    Raises:
        UsageError: for a missing, wrongly shaped or unexpected tensor.
    """
    family, reader, stored = opened.family, opened.reader, opened.stored
    matched: dict[str, list[str]] = {}
    used: set[str] = set()
    prefixed = any(short != name for short, name in stored.items())
    prefix = family.base_prefix if prefixed else ""
    for rule in family.rules(opened.config):
        expected = _expected_shapes(rule, shapes[rule.target])
        names = []
        for source, shape in zip(rule.sources, expected):
            if source not in stored:
                name = prefix + source if rule.in_base else source
                raise UsageError(
                    f"missing tensor {name!r} in {str(opened.directory)!r}; the "
                    f"{family.name} layout of this config.json needs it"
                )
            actual = reader.shape(stored[source])
            if actual != shape:
                raise UsageError(
                    f"tensor {stored[source]!r} has shape {actual}, but config.json "
                    f"implies {shape}; the weights do not match the config"
                )
            names.append(stored[source])
            used.add(source)
        matched[rule.target] = names

    accepted = used | family.optional_sources(opened.config) | set(opened.skipped)
    unexpected = sorted(
        name for name in stored
        if name not in accepted and not name.endswith(family.ignored_suffixes)
    )
    if unexpected:
        raise UsageError(
            f"unexpected tensor {stored[unexpected[0]]!r} in {str(opened.directory)!r} "
            f"({len(unexpected)} unexpected in all); the {family.name} layout of this "
            "config.json has no place for it"
        )
    return matched


def _read_state(opened: _Opened, model: Transformer) -> dict[str, torch.Tensor]:
    shapes = {name: tensor.shape for name, tensor in model.state_dict().items()}
    rules = {rule.target: rule for rule in opened.family.rules(opened.config)}
    state: dict[str, torch.Tensor] = {}
    for target, names in _match_tensors(opened, shapes).items():
        state[target] = rules[target].join([opened.reader.get(name) for name in names])
    return state


def load(path: str | os.PathLike, *, dtype: torch.dtype | str | None = None) -> Transformer:
    """Load a Hugging Face checkpoint directory into a blocklab Transformer.

    Supported ``model_type`` values: bert, bloom, gemma, gpt2, llama, mistral,
    qwen2 and t5 (the encoder). The directory needs config.json and either
    model.safetensors or a sharded model.safetensors.index.json.

    Args:
        path: the checkpoint directory.
        dtype: the parameter dtype, as a torch.dtype or its name; None or
            "auto" keeps the dtype that config.json names, else the stored one.

    Returns:
        The model in eval mode. ``model.hf_family`` stores the ``model_type``
        and ``model.hf_config`` the parsed config.json, which ``save`` reuses.

    Raises:
        UsageError: for a missing path or config.json, pickle-only weights, an
            unsupported model_type or setting, or a missing, unexpected or
            wrongly shaped tensor.
    """
    opened = _open(path)
    if opened.skipped:
        logger.warning(
            "%s: skipping %d tensors that blocklab does not model (first: %s)",
            opened.directory, len(opened.skipped), opened.stored[opened.skipped[0]],
        )
    model = Transformer(opened.config)
    state = _read_state(opened, model)
    config = opened.config
    if config.lm_head and config.tie_embeddings:
        state["lm_head.weight"] = state["embed.weight"]
    target = resolve_dtype(dtype, opened.hf_config) or state["embed.weight"].dtype
    model.load_state_dict(state, strict=True)
    model.to(target)
    model.eval()
    model.hf_family = opened.family.name
    model.hf_config = dict(opened.hf_config)
    logger.info("loaded %s checkpoint %s (%d tensors, %s)", opened.family.name,
                opened.directory, len(state), target)
    return model


def inspect(path: str | os.PathLike) -> CheckpointInfo:
    """Describe a checkpoint from its config.json and safetensors headers only.

    Every stored tensor is checked against the shape the config implies, with
    the same rules as ``load``, and the parameter count is summed from the
    header shapes of the tensors blocklab uses (a tied head once).

    Raises:
        UsageError: as ``load`` does for the config, the file layout and a
            missing, unexpected or wrongly shaped tensor.
    """
    opened = _open(path)
    with torch.device("meta"):
        model = Transformer(opened.config)
    shapes = {name: tensor.shape for name, tensor in model.state_dict().items()}
    parameter_names = {name for name, _ in model.named_parameters()}
    matched = _match_tensors(opened, shapes)
    parameters = 0
    for target, stored_names in matched.items():
        # A rule may fill a buffer rather than a parameter, and a buffer is not counted.
        if target in parameter_names:
            parameters += sum(math.prod(opened.reader.shape(name)) for name in stored_names)
    names = opened.reader.names()
    dtype = resolve_dtype(None, opened.hf_config)
    dtype_name = str(dtype).removeprefix("torch.") if dtype else opened.reader.dtype(names[0])
    return CheckpointInfo(
        path=opened.directory,
        family=opened.family.name,
        architectures=list(opened.hf_config.get("architectures") or []),
        config=opened.config,
        dtype=dtype_name,
        weight_files=[file.name for file in opened.files],
        tensor_count=len(names),
        parameter_count=parameters,
        skipped=[opened.stored[name] for name in opened.skipped],
    )


# Saving ----------------------------------------------------------------------------


def _check_expressible(family: Family, config: ModelConfig) -> dict[str, Any]:
    """Return the family's config.json for ``config``, or raise naming the blocking field."""
    hf_config = family.config_to_hf(config)
    names = {source for rule in family.rules(config) for source in rule.sources}
    expressed = family.config_from_hf(hf_config, names)
    blocking = differences(config, expressed)
    if blocking:
        key, value, needed = blocking[0]
        raise UsageError(
            f"cannot save as {family.name}: {key}={value!r}, but the {family.name} "
            f"format needs {key}={needed!r}"
        )
    return hf_config


def _matching_family(config: ModelConfig) -> Family:
    closest: tuple[int, str] | None = None
    for name in MATCH_ORDER:
        family = FAMILIES[name]
        try:
            hf_config = family.config_to_hf(config)
            names = {source for rule in family.rules(config) for source in rule.sources}
            blocking = differences(config, family.config_from_hf(hf_config, names))
        except UsageError as error:
            # A family whose config cannot even be written is the least close.
            distance, reason = 1_000_000, f"{name}: {error}"
        else:
            if not blocking:
                return family
            key, value, needed = blocking[0]
            distance, reason = len(blocking), f"{name}, which needs {key}={needed!r} (got {value!r})"
        if closest is None or distance < closest[0]:
            closest = (distance, reason)
    raise UsageError(
        "no Hugging Face format supported by blocklab expresses this config; the "
        f"closest is {closest[1]}; pass family= to see what blocks another"
    )


def save(model: Transformer, path: str | os.PathLike, *, family: str | None = None) -> Path:
    """Write ``model`` as a Hugging Face checkpoint directory (config.json and model.safetensors).

    ``transformers`` loads the result with ``from_pretrained``. Each file is
    written to a temporary name in the directory and renamed into place.

    Args:
        model: a blocklab Transformer.
        path: the output directory, created when missing.
        family: the ``model_type`` to write; by default the family the model
            was loaded from, else the first family that expresses its config.

    Returns:
        The directory.

    Raises:
        UsageError: for an unknown family, a config the family cannot
            express (naming the field), or a path that is a file.
    """
    if not isinstance(model, Transformer):
        raise UsageError(f"save expects a blocklab Transformer, got {type(model).__name__}")
    config = model.config
    family = family or getattr(model, "hf_family", None)
    if family is None:
        chosen = _matching_family(config)
    elif family in FAMILIES:
        chosen = FAMILIES[family]
    else:
        raise UsageError(f"unknown family {family!r}; expected one of {', '.join(sorted(FAMILIES))}")
    hf_config = _check_expressible(chosen, config)

    state = model.state_dict()
    prefix = chosen.base_prefix if config.lm_head else ""
    tensors: dict[str, torch.Tensor] = {}
    for rule in chosen.rules(config):
        for source, tensor in zip(rule.sources, rule.split(state[rule.target])):
            tensors[(prefix if rule.in_base else "") + source] = tensor

    loaded_from = getattr(model, "hf_config", None) or {}
    if loaded_from.get("model_type") == chosen.name:
        for key in CARRIED_FIELDS:
            if key in loaded_from:
                hf_config[key] = loaded_from[key]
    hf_config["dtype"] = str(model.embed.weight.dtype).removeprefix("torch.")

    directory = Path(path)
    if directory.exists() and not directory.is_dir():
        raise UsageError(f"output path {str(directory)!r} is a file; pass a directory")
    directory.mkdir(parents=True, exist_ok=True)
    write_safetensors(directory / WEIGHTS_NAME, tensors)
    write_json(directory / CONFIG_NAME, hf_config)
    stale_index = directory / INDEX_NAME
    if stale_index.exists():
        # A sharded index would take precedence over the new single file.
        stale_index.unlink()
        logger.warning("removed the stale %s in %s", INDEX_NAME, directory)
    logger.info("saved %s checkpoint to %s (%d tensors)", chosen.name, directory, len(tensors))
    return directory

