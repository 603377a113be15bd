"""What the supernet method modules share, written once.

- :func:`write_space_checkpoint` / :func:`check_space_checkpoint`: a checkpoint names the space it was saved
  from (name and fingerprint); loading it into another space fails before any weights are touched. Every
  module that trains a space writes and checks it this way (SPOS, ProxylessNAS, PARSEC through
  :class:`SupernetModule`; InstaNAS directly).
- :class:`SupernetModule`: a ``LightningModule`` that trains a ``space``: checks it is a ``SearchSpace``,
  forwards through it, validates on one fixed arch (``validation_arch()``) and restores the training path
  after, writes and checks the fingerprint, and turns epochs into weight steps for its LR schedule.
- :class:`HeldOutArchSearch`: a ``SupernetModule`` that learns a distribution over archs on held-out batches
  between its weight steps (ProxylessNAS's ``α``, PARSEC's prior ``π``): manual optimization with the
  optimizers ``[weights, arch]``, the held-out stream (:class:`HeldOutBatches`), the batch counter that seeds
  its draws (``batch_step``, saved in its checkpoints), cross-rank sums, and :meth:`~HeldOutArchSearch.held_out_step`,
  one step of the arch optimizer on a held-out batch that leaves the training path and the weight-step
  count as they were.

Who picks the training path is not here: ``PathSampling`` does (see :mod:`lightning_nas.strategies.path_policy`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import Tensor
from torch.utils.data import DataLoader, DistributedSampler
from typing_extensions import override

from lightning_nas.arch import Arch
from lightning_nas.errors import PrerequisiteError
from lightning_nas.seeding import step_generator
from lightning_nas.spaces.base import SearchSpace

__all__ = ["HeldOutArchSearch", "HeldOutBatches", "SupernetModule", "check_space_checkpoint",
           "write_space_checkpoint"]


def write_space_checkpoint(checkpoint: dict[str, Any], space: SearchSpace) -> None:
    """Record in ``checkpoint`` which space it was saved from (read by :func:`check_space_checkpoint`)."""
    checkpoint["space"] = {"name": space.space_name, "fingerprint": space.fingerprint()}


def check_space_checkpoint(space: SearchSpace, checkpoint: dict[str, Any]) -> None:
    """Refuse a checkpoint of another space before any weights are loaded.

    Raises:
        PrerequisiteError: naming both spaces (a ``ValueError``).
    """
    saved = checkpoint.get("space")
    if saved and saved.get("fingerprint") is not None and saved.get("fingerprint") != space.fingerprint():
        raise PrerequisiteError(
            f"checkpoint was saved from space {saved.get('name')} (fingerprint {saved.get('fingerprint')}), but "
            f"this model's space is {space.space_name} (fingerprint {space.fingerprint()}); load it with the same "
            "space settings (recipe) it was trained with."
        )


class SupernetModule(LightningModule):
    """Base of the modules that train one supernet ``space`` a path at a time.

    A subclass implements ``validation_arch()``: the arch that tells the search's progress (SPOS: a fixed
    random path; ProxylessNAS: the argmax of its logits; PARSEC: the most probable arch of its prior).

    Raises:
        TypeError: ``space`` is not a :class:`~lightning_nas.spaces.SearchSpace`.
    """

    needs_find_unused_parameters: ClassVar[bool] = True
    """Candidates off the active path get no gradient: under DDP the CLI picks a ``*_find_unused_parameters_true``
    strategy for such a module when the recipe leaves the choice to it."""

    def __init__(self, space: SearchSpace) -> None:
        super().__init__()
        if not isinstance(space, SearchSpace):
            raise TypeError(f"{type(self).__name__} needs a lightning_nas SearchSpace, got {type(space).__name__}")
        self.space = space
        self._train_arch: Arch | None = None

    def forward(self, x: Tensor) -> Tensor:
        return self.space(x)

    # --- validation on a fixed path ---------------------------------------------------------
    def validation_arch(self) -> Arch:
        raise NotImplementedError

    @override
    def on_validation_start(self) -> None:
        self._train_arch = self.space.active_arch
        self.space.activate(self.validation_arch(), validate=False)

    @override
    def on_validation_end(self) -> None:
        if self._train_arch is not None:
            self.space.activate(self._train_arch, validate=False)

    @override
    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self.space(x)
        acc = (logits.argmax(1) == y).float().mean()
        self.log_dict({"val/loss": F.cross_entropy(logits, y), "val/acc": acc}, batch_size=len(y), sync_dist=True)

    # --- schedule arithmetic ----------------------------------------------------------------
    def fit_epochs(self) -> int:
        """The epochs this fit runs (``max_epochs``; ``1`` when it is unset or unlimited)."""
        epochs = self.trainer.max_epochs
        return epochs if epochs and epochs > 0 else 1

    def epochs_to_steps(self, epochs: float) -> int:
        """The weight steps of ``epochs`` epochs: ``epochs · estimated_stepping_batches / fit_epochs()``."""
        return int(epochs * int(self.trainer.estimated_stepping_batches) / self.fit_epochs())

    # --- checkpoints ------------------------------------------------------------------------
    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        write_space_checkpoint(checkpoint, self.space)

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        check_space_checkpoint(self.space, checkpoint)


class HeldOutBatches:
    """An endless, resumable stream of validation batches for the arch steps; each rank its own shuffled shard."""

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


class HeldOutArchSearch(SupernetModule):
    """A supernet method that learns a categorical distribution over archs on held-out batches.

    Weight steps run on training batches (the subclass's ``training_step``, first optimizer); arch steps run
    on the held-out validation split (:meth:`held_out_step`, second optimizer). The arch step's draws come from
    a generator seeded by ``(seed + 1, batch_step)``, so every rank and a resumed run draw the same.

    A subclass sets ``checkpoint_key`` (its section of the checkpoint), ``arch_role`` (what its arch step
    learns, for messages) and implements ``distribution()``.

    Args:
        space: the supernet.
        seed: the seed of the held-out batches' order (``seed``) and of the arch steps' draws (``seed + 1``).
    """

    checkpoint_key: ClassVar[str] = "arch_search"
    arch_role: ClassVar[str] = "architecture distribution"

    def __init__(self, space: SearchSpace, seed: int) -> None:
        super().__init__(space)
        self.automatic_optimization = False
        self._decisions = space.decisions()
        self._held_out = HeldOutBatches(seed)
        self._arch_seed = seed + 1
        self.arch_steps = 0
        self.train_batches = 0  # training batches begun in this run (restored on resume); seeds the draws

    @property
    def batch_step(self) -> int:
        """The index, over the whole run, of the training batch in progress (``-1`` before the first)."""
        return self.train_batches - 1

    def distribution(self) -> Sequence[Tensor]:
        """The learned logits: one vector per decision, in the space's decision order."""
        raise NotImplementedError

    def arch_probabilities(self) -> dict[str, dict[Any, float]]:
        """``{decision: {value: probability}}`` under the softmax of the learned logits."""
        return {n: dict(zip(v, torch.softmax(a.detach().double().cpu(), 0).tolist()))
                for (n, v), a in zip(self._decisions.items(), self.distribution())}

    def global_sum(self, value: Tensor) -> Tensor:
        """``value`` summed over the DDP ranks (itself on one process): the same result on every rank."""
        return self.trainer.strategy.reduce(value, reduce_op="sum")

    # --- hooks ------------------------------------------------------------------------------
    @override
    def on_fit_start(self) -> None:
        datamodule = self.trainer.datamodule
        if datamodule is None or not callable(getattr(datamodule, "val_dataloader", None)):
            raise ValueError(f"{type(self).__name__} learns its {self.arch_role} on the held-out validation split: "
                             "fit it with a LightningDataModule that has val_dataloader() "
                             "(trainer.fit(model, datamodule=dm))")

    @override
    def on_train_epoch_start(self) -> None:
        self._held_out.start_epoch(self.current_epoch)

    @override
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # after the callbacks' hook (PathSampling), before training_step; a checkpoint saved at this batch's
        # end holds the count with this batch in it, so a resumed run goes on with the next index
        self.train_batches += 1

    @contextmanager
    def held_out_step(self) -> Iterator[tuple[Any, torch.Generator]]:
        """One step of the arch optimizer on the next held-out batch.

        Yields the batch and this step's generator; the block fills the arch parameters' ``.grad`` (the arch
        optimizer's gradients are cleared before). When the block ends without an error, the arch optimizer
        steps through ``strategy.optimizer_step`` (not ``LightningOptimizer.step``, so ``global_step`` keeps
        counting weight steps only) and ``arch_steps`` counts it; the training path is restored either way.

        Example::

            with self.held_out_step() as ((x, y), generator):
                self.manual_backward(arch_loss(x, y, generator))
            self.log("arch/...", ...)  # the step has been taken
        """
        previous = self.space.active_arch
        batch = self._held_out.next(self)
        optimizer = self.optimizers()[1].optimizer
        optimizer.zero_grad(set_to_none=True)
        try:
            yield batch, step_generator(self._arch_seed, self.batch_step)
            self.trainer.strategy.optimizer_step(optimizer, closure=_no_closure, model=self)
            self.arch_steps += 1
        finally:
            if previous is not None:
                self.space.activate(previous, validate=False)

    # --- checkpoints ------------------------------------------------------------------------
    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[self.checkpoint_key] = {"held_out": self._held_out.state_dict(), "arch_steps": self.arch_steps,
                                           "train_batches": self.train_batches}

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get(self.checkpoint_key, {})
        self._held_out.load_state_dict(state.get("held_out", {}))
        self.arch_steps = int(state.get("arch_steps", 0))
        self.train_batches = int(state.get("train_batches", 0))


def _no_closure() -> None:
    return None
