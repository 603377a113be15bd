"""What single-path method modules share: validation on one fixed arch of the supernet."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor

from lightning_nas.arch import Arch


class FixedPathValidation:
    """Mixin for a ``LightningModule`` with a ``space``: validate on ``validation_arch()``, then restore the path.

    The subclass decides which arch tells the search's progress (SPOS: a fixed random path; ProxylessNAS:
    the argmax of its logits; PARSEC: the most probable arch of its prior).
    """

    space: Any
    _train_arch: Arch | None = None

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
