"""blocklab: swappable, verified Transformer parts and a tool to compare them."""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# Public names load on first access, so that `import blocklab` (which the
# command-line entry point does first) does not import torch. An interrupt
# during that import then reaches the CLI's handler.
_LAZY = {
    "PRESETS": "blocklab.config",
    "ModelConfig": "blocklab.config",
    "RopeConfig": "blocklab.config",
    "RopeScaling": "blocklab.config",
    "generate": "blocklab.generate",
    "ModelOutput": "blocklab.model",
    "Transformer": "blocklab.model",
}
_SUBMODULES = ("nn", "hf")

if TYPE_CHECKING:
    from blocklab import hf, nn
    from blocklab.config import PRESETS, ModelConfig, RopeConfig, RopeScaling
    from blocklab.generate import generate
    from blocklab.model import ModelOutput, Transformer


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"blocklab.{name}")
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'blocklab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | set(_SUBMODULES))


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value: object) -> None:
        # Importing a submodule binds it on the package. The function
        # `generate` shares its name with the submodule blocklab.generate and
        # keeps the name, as an eager `from blocklab.generate import generate` would.
        if name in _LAZY and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


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
