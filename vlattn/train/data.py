"""Data plumbing of the trainer: a resumable sharded sampler, loaders, moving batches to a device."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from vlattn.train.distributed import DistInfo


class ResumableSampler(DistributedSampler):  # type: ignore[type-arg]
    """:class:`~torch.utils.data.DistributedSampler` that can start an epoch part-way through.

    Each epoch is a permutation drawn from ``(seed, epoch)``, sharded ``rank::world_size``, so a
    single process with batch ``k * b`` sees, step by step, the same examples as ``k`` processes
    with batch ``b``. :meth:`set_position` resumes at a sample offset within the epoch.
    """

    def __init__(self, dataset: Dataset[Any], dist_info: DistInfo, *, shuffle: bool, seed: int) -> None:
        super().__init__(
            dataset,
            num_replicas=dist_info.world_size,
            rank=dist_info.rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=False,
        )
        self.skip = 0

    def set_position(self, epoch: int, skip: int) -> None:
        """Start ``epoch`` at its ``skip``-th sample (of this process's shard)."""
        self.set_epoch(epoch)
        self.skip = skip

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self.skip :])

    def __len__(self) -> int:
        return max(self.num_samples - self.skip, 0)


def make_loader(
    dataset: Dataset[Any],
    *,
    batch_size: int,
    collate: Any,
    sampler: Any = None,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader[Any]:
    """A DataLoader over ``dataset`` in ``sampler`` order (dataset order when ``None``)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False,
        collate_fn=collate,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=False,
        # its own generator: creating an iterator must not draw from the global RNG, or a
        # resumed run (which creates one mid-epoch) would drift from a straight one
        generator=torch.Generator().manual_seed(0),
    )


def to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor inside ``batch`` (tuples, lists, dicts, dataclasses) to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        return dataclasses.replace(
            batch, **{f.name: to_device(getattr(batch, f.name), device) for f in dataclasses.fields(batch) if f.init}
        )
    if isinstance(batch, Mapping):
        return type(batch)({k: to_device(v, device) for k, v in batch.items()})  # type: ignore[call-arg]
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(to_device(v, device) for v in batch))
    if isinstance(batch, list | tuple):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def batch_size_of(batch: Any) -> int:
    """Number of examples in ``batch``: the leading size of its first tensor."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        batch = [getattr(batch, f.name) for f in dataclasses.fields(batch)]
    if isinstance(batch, Mapping):
        batch = list(batch.values())
    if isinstance(batch, list | tuple):
        for item in batch:
            n = batch_size_of(item)
            if n:
                return n
    return 0
