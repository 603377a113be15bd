"""A training loader that resumes exactly, at an epoch boundary or mid-epoch.

The order of the samples is a function of ``(seed, epoch, rank)`` and each sample's augmentation a function of
``(seed, epoch, index)``, never of the process's RNG history: a run resumed from a checkpoint sees the same
batches, augmented the same way, as the run that wrote it. The loader implements ``state_dict`` /
``load_state_dict``, which Lightning saves with the fit loop and restores before the resumed epoch starts
(its documented interface for resumable loaders): the epoch, the batches already consumed in it (skipped on
resume, without loading them) and the process's torch RNG state (what dropout and other module randomness
read next), so the steps after a checkpoint are the steps the uninterrupted run took.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

__all__ = ["EpochSampler", "ResumableDataLoader", "sample_seed"]

_MASK = (1 << 63) - 1


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of sample ``index`` in ``epoch``: the same on every rank, worker and run."""
    return (seed * 1_000_003 + epoch * 7_919_099 + index * 104_729 + 31) & _MASK


def run_seed(seed: int) -> int:
    """``seed`` mixed with the run's ``seed_everything`` seed (``PL_GLOBAL_SEED``), so that one still varies runs."""
    global_seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
    return (seed * 999_983 + global_seed) & _MASK


class EpochSampler(DistributedSampler):
    """Each epoch a permutation seeded by ``(seed, epoch)``, this rank's share of it, each index with its seed.

    Yields ``(index, augmentation seed)`` pairs (see :class:`~lightning_nas.datamodules.base.TransformedSubset`).
    A ``DistributedSampler``, so Lightning sets its epoch and leaves it in place under DDP.

    Args:
        dataset: the data set to sample.
        num_replicas: DDP world size.
        rank: this process's rank.
        shuffle: permute per epoch (else in order).
        seed: the sampler's seed.
        drop_last: drop the tail that does not divide evenly across ranks.
    """

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                         drop_last=drop_last)
        self.skip = 0

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        indices = list(super().__iter__())
        start, self.skip = self.skip, 0  # a mid-epoch resume skips what was consumed, once
        for i in indices[start:]:
            yield i, sample_seed(self.seed, self.epoch, i)


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` whose position in the epoch and the process RNG are saved with Lightning's checkpoints.

    Its workers' base seed comes from its own generator, reseeded per epoch, so iterating it never draws
    from the global RNG. Use it with an :class:`EpochSampler`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._epoch, self._yielded = 0, 0
        self._resume: dict[str, Any] | None = None

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        epoch = int(getattr(self.sampler, "epoch", 0))
        self._epoch, self._yielded = epoch, 0
        resume, self._resume = self._resume, None
        if resume is not None and int(resume["epoch"]) == epoch and hasattr(self.sampler, "skip"):
            self._yielded = int(resume["batches"])
            self.sampler.skip = self._yielded * int(self.batch_size or 1)
        if self.generator is not None:
            self.generator.manual_seed(sample_seed(int(getattr(self.sampler, "seed", 0)), epoch, -1 - self._rank()))
        return self._count(super().__iter__())

    def _rank(self) -> int:
        return int(getattr(self.sampler, "rank", 0))

    def _count(self, batches: Iterator[Any]) -> Iterator[Any]:
        for batch in batches:
            self._yielded += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        """Where the epoch stands and the RNG the next training step reads (tensors and ints only)."""
        state: dict[str, Any] = {"epoch": self._epoch, "batches": self._yielded, "rng": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume at the saved batch of the saved epoch; restore the RNG state (called just before the epoch)."""
        self._resume = {"epoch": state_dict.get("epoch", -1), "batches": state_dict.get("batches", 0)}
        if state_dict.get("rng") is not None:
            torch.set_rng_state(state_dict["rng"])
        cuda = state_dict.get("cuda_rng")
        if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
