"""Hugging Face interop: load checkpoints into blocklab models and save them back.

``load(path)`` reads a local checkpoint directory (config.json plus
safetensors weights) of a supported family into a ``Transformer``.
``save(model, path)`` writes a directory that ``transformers`` loads with
``from_pretrained``. ``inspect(path)`` describes a checkpoint from its config
and tensor headers. None of them imports ``transformers``, and pickle-format
weights are rejected.
"""

from blocklab.hf.convert import FAMILIES, CheckpointInfo, family_for, inspect, load, save

SUPPORTED = tuple(sorted(FAMILIES))

__all__ = ["FAMILIES", "SUPPORTED", "CheckpointInfo", "family_for", "inspect", "load", "save"]
