"""A training loader that resumes exactly, at an epoch boundary or mid-epoch.

The order of the samples is a function of ``(seed, epoch, rank)`` and each sample's augmentation a function of
``(seed, epoch, index)``, never of the process's RNG history: a run resumed from a checkpoint sees the same
batches, augmented the same way, as the run that wrote it. At the start of each epoch the loader also seeds the
process's torch RNG from ``(seed, epoch, rank)``, so what the training steps draw from it (dropout) is a function
of the run's position too. Mid-epoch, the loader's ``state_dict`` / ``load_state_dict`` (Lightning saves it with
the fit loop and restores it before a resumed epoch: its documented interface for resumable loaders) carry the
epoch, the batches already consumed (skipped on resume, without loading them) and the torch RNG state, so the steps
after a checkpoint are the steps the uninterrupted run took.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from lightning_nas.seeding import mix_seed

__all__ = ["EpochSampler", "ResumableDataLoader", "sample_seed"]

def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of sample ``index`` in ``epoch``: the same on every rank, worker and run."""
    return mix_seed(seed, epoch, index)


def run_seed(seed: int) -> int:
    """``seed`` mixed with the run's ``seed_everything`` seed (``PL_GLOBAL_SEED``), so that one still varies runs."""
    global_seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
    return mix_seed(seed, global_seed)


class EpochSampler(DistributedSampler):
    """Each epoch a permutation seeded by ``(seed, epoch)``, this rank's share of it, each index with its seed.

    Yields ``(index, augmentation seed)`` pairs (see :class:`~lightning_nas.datamodules.datasets.TransformedSubset`).
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
        return self._epoch_batches()

    def _epoch_batches(self) -> Iterator[Any]:
        # a generator: this runs at the first batch, after Lightning set the sampler's epoch (on a resume it
        # creates the iterator before that)
        epoch, seed, rank = int(getattr(self.sampler, "epoch", 0)), int(getattr(self.sampler, "seed", 0)), self._rank()
        self._epoch, self._yielded = epoch, 0
        resume, self._resume = self._resume, None
        if resume is not None and int(resume["epoch"]) == epoch and hasattr(self.sampler, "skip"):
            self._yielded = int(resume["batches"])
            self.sampler.skip = self._yielded * int(self.batch_size or 1)
            _set_rng(resume)
        else:  # a new epoch: the module's randomness (dropout) restarts from (seed, epoch, rank), not from history
            torch.manual_seed(sample_seed(seed, epoch, -(1 << 20) - rank))
        if self.generator is not None:
            self.generator.manual_seed(sample_seed(seed, epoch, -1 - rank))
        for batch in super().__iter__():
            self._yielded += 1
            yield batch

    def _rank(self) -> int:
        return int(getattr(self.sampler, "rank", 0))

    def state_dict(self) -> dict[str, Any]:
        """Where the epoch stands and the RNG the next training step reads (tensors and ints only)."""
        state: dict[str, Any] = {"epoch": self._epoch, "batches": self._yielded, "rng": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume at the saved batch of the saved epoch, with the saved RNG state (applied at its first batch)."""
        self._resume = {"epoch": state_dict.get("epoch", -1), "batches": state_dict.get("batches", 0),
                        "rng": state_dict.get("rng"), "cuda_rng": state_dict.get("cuda_rng")}


def _set_rng(state: dict[str, Any]) -> None:
    if state.get("rng") is not None:
        torch.set_rng_state(state["rng"])
    cuda = state.get("cuda_rng")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
