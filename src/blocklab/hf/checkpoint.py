"""Reading and writing the files of a Hugging Face checkpoint directory.

Only ``config.json`` (parsed with ``json``) and safetensors files are read.
Pickle-based weights (``pytorch_model.bin`` and friends) are rejected, because
unpickling can execute arbitrary code. Nothing here imports ``transformers``.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from blocklab.errors import UsageError

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")

DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}


def checkpoint_directory(path: str | os.PathLike) -> Path:
    """Return ``path`` as a directory, or raise UsageError when it is not one."""
    directory = Path(path)
    if not directory.exists():
        raise UsageError(
            f"checkpoint path {str(directory)!r} does not exist; "
            "pass a directory with config.json and model.safetensors"
        )
    if not directory.is_dir():
        raise UsageError(
            f"checkpoint path {str(directory)!r} is a file, not a directory; "
            "pass the directory that contains config.json"
        )
    return directory


def read_config(directory: Path) -> dict[str, Any]:
    """Parse ``config.json`` as plain JSON; no code from the checkpoint runs."""
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise UsageError(
            f"missing {CONFIG_NAME} in {str(directory)!r}; a Hugging Face checkpoint "
            "directory needs it next to the weights"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UsageError(f"cannot parse {str(path)!r} as JSON: {error}") from error
    if not isinstance(data, dict):
        raise UsageError(
            f"invalid {str(path)!r}: expected a JSON object, got {type(data).__name__}"
        )
    return data


def _pickle_files(directory: Path) -> list[str]:
    return sorted(
        entry.name for entry in directory.iterdir()
        if entry.is_file() and (entry.name.endswith(PICKLE_SUFFIXES)
                                or entry.name.endswith(".bin.index.json"))
    )


def weight_files(directory: Path) -> list[Path]:
    """Return the safetensors files of a checkpoint: one file or every shard of the index.

    Raises:
        UsageError: when there are no safetensors weights (naming the pickle
            files when those are all there is), or the index is invalid.
    """
    index = directory / INDEX_NAME
    if index.is_file():
        return _shards_from_index(directory, index)
    single = directory / WEIGHTS_NAME
    if single.is_file():
        return [single]
    pickles = _pickle_files(directory)
    if pickles:
        raise UsageError(
            f"{str(directory)!r} has only pickle-format weights ({', '.join(pickles)}), "
            "and blocklab reads safetensors only because unpickling a file can execute "
            "arbitrary code; to convert it where you trust the file, load it with "
            "transformers' from_pretrained and call "
            "save_pretrained(out_dir, safe_serialization=True)"
        )
    raise UsageError(
        f"no weights in {str(directory)!r}: expected {WEIGHTS_NAME} or {INDEX_NAME}"
    )


def _shards_from_index(directory: Path, index: Path) -> list[Path]:
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UsageError(f"cannot parse {str(index)!r} as JSON: {error}") from error
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise UsageError(
            f"invalid {str(index)!r}: expected a non-empty 'weight_map' object "
            "from tensor names to shard files"
        )
    shards = []
    for name in sorted(set(weight_map.values())):
        # A shard name must be a plain file name inside the checkpoint
        # directory, so that an index cannot point the reader elsewhere.
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
            raise UsageError(
                f"invalid shard name {name!r} in {str(index)!r}; "
                "expected a file name inside the checkpoint directory"
            )
        shard = directory / name
        if not shard.is_file():
            raise UsageError(f"missing shard {name!r} listed in {str(index)!r}")
        shards.append(shard)
    return shards


class TensorReader:
    """Lazy access to the tensors of one or more safetensors files.

    Opening reads the headers only; ``get`` reads one tensor's data.

    Args:
        files: the safetensors files of one checkpoint.

    Raises:
        UsageError: for an unreadable file or a tensor stored in two shards.
    """

    def __init__(self, files: list[Path]) -> None:
        self._location: dict[str, Any] = {}
        for path in files:
            try:
                handle = safe_open(str(path), framework="pt")
            except (SafetensorError, OSError) as error:
                raise UsageError(f"cannot read safetensors file {str(path)!r}: {error}") from error
            for name in handle.keys():
                if name in self._location:
                    raise UsageError(
                        f"tensor {name!r} appears in more than one shard "
                        f"(again in {path.name!r}); the checkpoint is inconsistent"
                    )
                self._location[name] = handle

    def names(self) -> list[str]:
        return sorted(self._location)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._location[name].get_slice(name).get_shape())

    def dtype(self, name: str) -> str:
        return str(self._location[name].get_slice(name).get_dtype())

    def get(self, name: str) -> torch.Tensor:
        return self._location[name].get_tensor(name)


def resolve_dtype(requested: torch.dtype | str | None, hf_config: dict[str, Any]) -> torch.dtype | None:
    """Return the dtype to load in: ``requested``, else the checkpoint's, else None.

    ``None`` or ``"auto"`` selects the config's ``dtype`` (``torch_dtype`` in
    configs written before transformers 5). None comes back when the config
    names none, and the caller then keeps the stored tensor dtype.
    """
    if isinstance(requested, torch.dtype):
        return requested
    if requested not in (None, "auto"):
        name = str(requested).removeprefix("torch.")
        if name not in DTYPES:
            raise UsageError(
                f"invalid dtype {requested!r}; expected a torch.dtype or one of "
                + ", ".join(DTYPES)
            )
        return DTYPES[name]
    stored = hf_config.get("dtype", hf_config.get("torch_dtype"))
    if stored is None:
        return None
    name = str(stored).removeprefix("torch.")
    if name not in DTYPES:
        logger.warning("config.json names dtype %r, which blocklab does not know; "
                       "keeping the stored tensor dtype", stored)
        return None
    return DTYPES[name]


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Write ``path`` through a temporary file in the same directory, then rename it.

    A crash midway leaves any previous ``path`` as it was.
    """
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp",
                                             dir=path.parent)
    os.close(descriptor)
    try:
        write(Path(temporary))
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: dict[str, Any]) -> None:
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    write_atomic(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    # save_file rejects tensors that share storage (views from a split), so
    # every tensor gets its own contiguous copy.
    owned = {name: tensor.detach().to("cpu").contiguous().clone() for name, tensor in tensors.items()}
    write_atomic(path, lambda temporary: save_file(owned, str(temporary), metadata={"format": "pt"}))
