"""``SPOSModule``: Single Path One-Shot supernet training.

Guo et al., "Single Path One-Shot Neural Architecture Search with Uniform Sampling", ECCV 2020,
https://arxiv.org/abs/1904.00420 (official code: megvii-model/SinglePathOneShot).

The supernet trains one path per batch (chosen by the ``PathSampling`` callback, which the module adds when the
trainer has none); candidates that
did not run get no update at all: their gradients are set to ``None`` after backward, so SGD applies
neither momentum nor weight decay to them. The search happens afterwards (``EvolutionSearch``).
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from lightning.pytorch import Callback
from torch import Tensor, nn
from typing_extensions import override

from lightning_nas.arch import Arch
from lightning_nas.callbacks.path_sampling import path_sampling_unless_present
from lightning_nas.modules.optim import build_optimizer, split_decay, warmup_schedule
from lightning_nas.modules.supernet import SupernetModule
from lightning_nas.nn import inactive_parameters
from lightning_nas.seeding import step_generator
from lightning_nas.spaces.base import SearchSpace


class SPOSModule(SupernetModule):
    """Train a supernet one uniformly sampled path at a time.

    Args:
        space: the supernet (any :class:`~lightning_nas.spaces.SearchSpace`).
        lr: peak learning rate (official: 0.5 at batch 1024).
        momentum: SGD momentum.
        weight_decay: decay on conv/linear weights only (official: 4e-5).
        lr_decay: ``"linear"`` (official) or ``"cosine"`` to zero over the run.
        warmup_epochs: linear warm-up length.
        label_smoothing: cross-entropy label smoothing (official: 0.1).
        val_seed: seed of the fixed path the supernet is validated on during training.
    """

    def __init__(self, space: SearchSpace, lr: float = 0.5, momentum: float = 0.9, weight_decay: float = 4e-5,
                 lr_decay: str = "linear", warmup_epochs: float = 0.0, label_smoothing: float = 0.1,
                 val_seed: int = 12345) -> None:
        super().__init__(space)
        self.save_hyperparameters(ignore=["space"])
        self._inactive_cache: dict[tuple[int, int], list[nn.Parameter]] = {}

    @override
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        logits = self.space(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.hparams.label_smoothing)
        acc = (logits.detach().argmax(1) == y).float().mean()
        self.log_dict({"train/loss": loss, "train/acc": acc}, prog_bar=True, batch_size=len(y))
        return loss

    def inactive_parameters(self) -> list[nn.Parameter]:
        """Parameters of the candidates the active path does not run."""
        return inactive_parameters(self.space.choice_modules(), self._inactive_cache)

    @override
    def on_after_backward(self) -> None:
        # the official code drops all-zero gradients; we know which candidates did not run, no reduction needed
        for p in self.inactive_parameters():
            p.grad = None

    @override
    def configure_callbacks(self) -> list[Callback]:
        """A uniform ``PathSampling()`` when the trainer has none: without it one fixed path would train."""
        return path_sampling_unless_present(self.trainer)

    # --- validation on a fixed path -------------------------------------------------------
    def validation_arch(self) -> Arch:
        return self.space.sample(step_generator(self.hparams.val_seed, 0))

    # --- optimisation ---------------------------------------------------------------------
    @override
    def configure_optimizers(self) -> Any:
        hp = self.hparams
        optimizer = build_optimizer(split_decay(self.space, hp.weight_decay, conv_linear_only=True), "sgd", hp.lr,
                                    hp.momentum)
        total = int(self.trainer.estimated_stepping_batches)
        schedule = warmup_schedule(optimizer, total, self.epochs_to_steps(hp.warmup_epochs), hp.lr_decay)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


__all__ = ["SPOSModule"]
