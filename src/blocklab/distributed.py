"""Process groups, model wrapping and full state dicts for multi-process training.

``torchrun`` sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; when the world
has more than one process, ``init_distributed`` joins the process group (gloo
on CPU, NCCL on CUDA). A single process runs without a process group, and every
helper here then does the plain single-process thing, so the training loop
calls them unconditionally.

Checkpoints always hold full, unsharded tensors: ``full_model_state`` and
``full_optimizer_state`` gather them to rank 0 (a collective that every rank
must enter), and ``load_model_state`` and ``load_optimizer_state`` take full
tensors on every rank and shard them again when the model is FSDP-sharded.
A checkpoint therefore loads whatever the number of processes that wrote it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from blocklab.errors import UsageError

logger = logging.getLogger(__name__)


@dataclass
class DistContext:
    """Rank, world size and device of this process.

    Attributes:
        rank: global rank, 0 in a single process.
        world_size: number of processes.
        local_rank: rank on this machine; it picks the CUDA device.
        device: the device this process computes on.
        owns_group: this context created the process group and destroys it
            in ``shutdown``.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """True on rank 0, the only rank that writes files and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """Turn ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` into a device.

    ``auto`` and a bare ``cuda`` choose ``cuda:LOCAL_RANK`` when CUDA is
    available; ``auto`` falls back to the CPU.

    Raises:
        UsageError: for an unknown spec or CUDA requested without a GPU.
    """
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise UsageError(
                f"device {spec!r} is not available: this torch build sees no CUDA GPU; "
                "use --device cpu"
            )
        if spec == "cuda":
            return torch.device("cuda", local_rank)
        return torch.device(spec)
    raise UsageError(f"invalid device {spec!r}; expected auto, cpu, cuda or cuda:N")


def init_distributed(device_spec: str = "auto") -> DistContext:
    """Join the torchrun process group when there is one, and choose the device.

    Reads ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``. With a world of one (or
    none of them set) no process group is created.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_spec, local_rank)
    if world_size <= 1:
        return DistContext(device=device)

    owns_group = False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
        owns_group = True
        logger.info("joined process group: rank %d of %d, backend %s", rank, world_size, backend)
    return DistContext(rank, world_size, local_rank, device, owns_group)


def shutdown(context: DistContext) -> None:
    """Destroy the process group if ``init_distributed`` created it."""
    if context.owns_group and dist.is_initialized():
        dist.destroy_process_group()
        context.owns_group = False


def barrier(context: DistContext) -> None:
    if context.distributed:
        dist.barrier()


def all_reduce(tensor: torch.Tensor, context: DistContext, op: str = "mean") -> torch.Tensor:
    """Return ``tensor`` reduced over all ranks (``mean``, ``sum`` or ``max``)."""
    if not context.distributed:
        return tensor
    reduced = tensor.detach().clone()
    if op == "max":
        dist.all_reduce(reduced, op=dist.ReduceOp.MAX)
        return reduced
    dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
    return reduced / context.world_size if op == "mean" else reduced


def broadcast_flag(flag: bool, context: DistContext) -> bool:
    """Return True on every rank when ``flag`` is True on any rank."""
    if not context.distributed:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=context.device)
    return bool(all_reduce(value, context, op="max").item() > 0)


def wrap_model(model: nn.Module, context: DistContext, *, fsdp: bool) -> nn.Module:
    """Wrap ``model`` for data-parallel training and return the module to call.

    With ``fsdp`` every Transformer block, and then the whole model, is
    sharded in place with FSDP2's ``fully_shard``, so the returned module is
    ``model`` itself. Otherwise the model is wrapped in DistributedDataParallel.
    In a single process the model is returned unchanged.
    """
    if not context.distributed:
        if fsdp:
            logger.warning("--fsdp has no effect in a single process; training unsharded")
        return model
    if fsdp:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(context.device.type, (context.world_size,))
        for block in getattr(model, "blocks", []):
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [context.device.index] if context.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


@contextlib.contextmanager
def gradient_sync(wrapped: nn.Module, enabled: bool) -> Iterator[None]:
    """Skip the gradient all-reduce inside the block when ``enabled`` is False.

    Gradient accumulation uses this for every micro-batch but the last, so the
    ranks communicate once per optimizer step.
    """
    if enabled:
        yield
        return
    if hasattr(wrapped, "no_sync"):  # DistributedDataParallel
        with wrapped.no_sync():
            yield
        return
    if hasattr(wrapped, "set_requires_gradient_sync"):  # FSDP2
        wrapped.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            wrapped.set_requires_gradient_sync(True)
        return
    yield


_GATHER = StateDictOptions(full_state_dict=True, cpu_offload=True)
_SCATTER = StateDictOptions(full_state_dict=True)


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Gather the unsharded model state on rank 0 (other ranks get an empty dict).

    Every rank must call this, because gathering FSDP shards is a collective.
    ``model`` is the unwrapped module (not the DDP wrapper).
    """
    return get_model_state_dict(model, options=_GATHER)


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Gather the optimizer state keyed by parameter name, like ``full_model_state``."""
    return get_optimizer_state_dict(model, optimizer, options=_GATHER)


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load full tensors into ``model``, sharding them again under FSDP."""
    set_model_state_dict(model, state, options=_SCATTER)


def load_optimizer_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    """Load a full optimizer state produced by ``full_optimizer_state``."""
    set_optimizer_state_dict(model, optimizer, state, options=_SCATTER)


def total_norm(value: torch.Tensor) -> torch.Tensor:
    """Return a plain tensor from a gradient norm that may be a DTensor (FSDP2)."""
    full_tensor = getattr(value, "full_tensor", None)
    return full_tensor() if callable(full_tensor) else value
