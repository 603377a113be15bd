"""What single-path method modules share: validation on one fixed arch of the supernet, and the stream of
held-out batches their architecture steps read."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import Tensor
from torch.utils.data import DataLoader, DistributedSampler

from lightning_nas.arch import Arch


class FixedPathValidation:
    """Mixin for a ``LightningModule`` with a ``space``: validate on ``validation_arch()``, then restore the path.

    The subclass decides which arch tells the search's progress (SPOS: a fixed random path; ProxylessNAS:
    the argmax of its logits; PARSEC: the most probable arch of its prior).
    """

    space: Any
    _train_arch: Arch | None = None
    needs_find_unused_parameters: ClassVar[bool] = True
    """Candidates off the active path get no gradient: under DDP the CLI picks a ``*_find_unused_parameters_true``
    strategy for such a module when the recipe leaves the choice to it."""

    def validation_arch(self) -> Arch:
        raise NotImplementedError

    def on_validation_start(self) -> None:
        self._train_arch = self.space.active_arch
        self.space.activate(self.validation_arch(), validate=False)

    def on_validation_end(self) -> None:
        if self._train_arch is not None:
            self.space.activate(self._train_arch, validate=False)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self.space(x)
        acc = (logits.argmax(1) == y).float().mean()
        self.log_dict({"val/loss": F.cross_entropy(logits, y), "val/acc": acc},  # type: ignore[attr-defined]
                      batch_size=len(y), sync_dist=True)


class HeldOutBatches:
    """An endless, resumable stream of validation batches for the prior steps; each rank its own shuffled shard."""

    def __init__(self, seed: int) -> None:
        self.seed, self.epoch, self.consumed = seed, -1, 0
        self._loader: DataLoader | None = None
        self._iter: Any = None

    def start_epoch(self, epoch: int) -> None:
        if self.epoch != epoch:
            self.epoch, self.consumed, self._iter = epoch, 0, None

    def _build(self, module: LightningModule) -> DataLoader:
        loader = module.trainer.datamodule.val_dataloader()
        loader = loader[0] if isinstance(loader, (list, tuple)) else loader
        if getattr(loader, "batch_size", None) is None:
            return loader  # a custom batch sampler: used as given
        sampler = DistributedSampler(loader.dataset, num_replicas=module.trainer.world_size,
                                     rank=module.trainer.global_rank, shuffle=True, seed=self.seed)
        # an own generator: a new pass never draws from the global RNG (which the training steps read)
        return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=sampler,
                          num_workers=loader.num_workers, collate_fn=loader.collate_fn, pin_memory=loader.pin_memory,
                          generator=torch.Generator().manual_seed(self.seed))

    def next(self, module: LightningModule) -> Any:
        if self._loader is None:
            self._loader = self._build(module)
        if self._iter is None:
            passes, skip = divmod(self.consumed, max(1, len(self._loader)))
            if isinstance(self._loader.sampler, DistributedSampler):
                self._loader.sampler.set_epoch(self.epoch * 10_007 + passes)
            self._iter = iter(self._loader)
            for _ in range(skip):  # resumed mid-epoch: skip what the interrupted run consumed
                next(self._iter)
        try:
            batch = next(self._iter)
        except StopIteration:
            self._iter = None
            return self.next(module)
        self.consumed += 1
        return module.transfer_batch_to_device(batch, module.device, 0)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "consumed": self.consumed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.consumed, self._iter = int(state.get("epoch", -1)), int(state.get("consumed", 0)), None
