"""Multi-process training under ``torchrun``: process-group setup, device choice, small collectives.

``torchrun --nproc-per-node 2 -m vlattn train TASK ...`` sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``;
the trainer then wraps the model in DDP, shards the data and logs/saves from rank 0 only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.distributed as dist

from vlattn.errors import VlattnError


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in a (possibly single-process) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    # whether this process joined the process group itself (and so leaves it in :func:`shutdown`)
    joined_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(preference: str, local_rank: int = 0) -> torch.device:
    """``auto`` picks CUDA (this process's local GPU) when available, else CPU."""
    pref = preference.strip().lower()
    if pref == "auto":
        pref = "cuda" if torch.cuda.is_available() else "cpu"
    if pref.startswith("cuda"):
        if not torch.cuda.is_available():
            raise VlattnError(f"--device {preference}: CUDA is not available on this machine")
        if pref == "cuda":
            return torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
    try:
        return torch.device(pref)
    except RuntimeError:
        raise VlattnError(f"--device {preference!r} is not a device (use auto, cpu, cuda or cuda:N)") from None


def from_environment() -> DistInfo:
    """This process's place in the run as ``torchrun`` describes it (``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``); a single-process run without them. The one place these variables are read."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo(local_rank=int(os.environ.get("LOCAL_RANK", "0")))
    return DistInfo(int(os.environ.get("RANK", "0")), world_size, int(os.environ.get("LOCAL_RANK", "0")))


def init_distributed(device: torch.device, info: DistInfo | None = None) -> DistInfo:
    """Join the process group that ``info`` (default: :func:`from_environment`) describes; a no-op
    in a single-process run or when the group already exists."""
    info = info if info is not None else from_environment()
    if not info.enabled or dist.is_initialized():
        return info
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend)
    return replace(info, joined_group=True)


def shutdown(info: DistInfo) -> None:
    """Leave the process group if :func:`init_distributed` joined it (one made by the caller stays)."""
    if info.joined_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    """Wait for every process (no-op in a single-process run)."""
    if info.enabled:
        dist.barrier()


def all_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean of ``value`` over processes (returns ``value`` itself in a single-process run)."""
    if not info.enabled:
        return value
    out = value.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / info.world_size


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every process."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
