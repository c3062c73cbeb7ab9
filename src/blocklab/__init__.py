"""blocklab: swappable, verified Transformer parts and a tool to compare them."""

from blocklab import nn
from blocklab.config import PRESETS, ModelConfig, RopeConfig, RopeScaling
from blocklab.generate import generate
from blocklab.model import ModelOutput, Transformer

__version__ = "0.1.0"


def __getattr__(name: str):
    # blocklab.hf loads lazily so that importing blocklab stays light.
    if name == "hf":
        import importlib

        return importlib.import_module("blocklab.hf")
    raise AttributeError(f"module 'blocklab' has no attribute {name!r}")


__all__ = [
    "PRESETS",
    "ModelConfig",
    "ModelOutput",
    "RopeConfig",
    "RopeScaling",
    "Transformer",
    "__version__",
    "generate",
    "hf",
    "nn",
]
