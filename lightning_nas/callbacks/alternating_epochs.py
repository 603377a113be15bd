"""``AlternatingEpochs``: controller and supernet epochs in turn, each with the other side frozen."""

from __future__ import annotations

from typing import Any, Protocol

from lightning.pytorch import Callback, LightningModule, Trainer
from torch import nn
from typing_extensions import override

from lightning_nas.callbacks.protocols import missing_members

PHASES = ("pretrain", "controller", "supernet", "finetune")


class Alternating(Protocol):
    """What ``AlternatingEpochs`` drives: a ``space``, a ``controller``, the stage of an epoch, a ``phase``."""

    space: nn.Module
    controller: nn.Module
    phase: str

    def stage_of(self, epoch: int) -> str: ...


def set_trainable(module: nn.Module, trainable: bool) -> None:
    """Train mode and ``requires_grad`` on (``True``), or eval mode and ``requires_grad`` off (frozen)."""
    module.train(trainable)
    for p in module.parameters():
        p.requires_grad_(trainable)


class AlternatingEpochs(Callback):
    """Alternate controller epochs and supernet epochs during the module's ``"search"`` stage.

    At the start of every training epoch the phase is a function of the epoch only (so a resumed run
    continues in the right phase): outside the search stage it is the stage itself (``"pretrain"``,
    ``"finetune"``: the supernet trains, the controller is frozen); inside, ``controller_epochs``
    controller epochs then ``supernet_epochs`` supernet epochs, repeated. In a controller epoch the
    supernet is frozen (eval mode, ``requires_grad`` off) and the controller trains; in every other
    phase the reverse. The phase is written to ``pl_module.phase``.

    Args:
        controller_epochs: controller epochs per round.
        supernet_epochs: supernet epochs per round.

    Raises:
        TypeError: in ``setup`` when the module lacks ``space``, ``controller`` or ``stage_of``.
    """

    def __init__(self, controller_epochs: int = 1, supernet_epochs: int = 1) -> None:
        if controller_epochs < 1 or supernet_epochs < 1:
            raise ValueError("AlternatingEpochs needs controller_epochs >= 1 and supernet_epochs >= 1")
        self.controller_epochs, self.supernet_epochs = controller_epochs, supernet_epochs
        self.phase = ""
        self.epochs_in_phase: dict[str, int] = dict.fromkeys(PHASES, 0)

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        missing = missing_members(pl_module, ("space", "controller", "phase", "stage_of"))
        if missing:
            raise TypeError(
                f"AlternatingEpochs needs a module with `space`, `controller`, `phase` and `stage_of(epoch)` "
                f"(e.g. InstaNASModule); {type(pl_module).__name__} lacks {', '.join(missing)}."
            )

    def phase_of(self, pl_module: Any, epoch: int) -> str:
        """The phase of ``epoch``: the module's stage, or controller/supernet inside the search stage."""
        stage = pl_module.stage_of(epoch)
        if stage != "search":
            return stage
        first = next(e for e in range(epoch + 1) if pl_module.stage_of(e) == "search")
        k = (epoch - first) % (self.controller_epochs + self.supernet_epochs)
        return "controller" if k < self.controller_epochs else "supernet"

    def apply(self, pl_module: Any, phase: str) -> None:
        """Freeze one side and unfreeze the other for ``phase``."""
        set_trainable(pl_module.space, phase != "controller")
        set_trainable(pl_module.controller, phase == "controller")
        pl_module.phase = phase

    @override
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.phase = self.phase_of(pl_module, trainer.current_epoch)
        self.apply(pl_module, self.phase)

    @override
    def on_train_batch_start(self, trainer: Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        # Lightning puts the whole module back in train mode around validation: re-freeze the frozen side
        frozen = pl_module.space if self.phase == "controller" else pl_module.controller
        if frozen.training:
            frozen.eval()

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.phase:
            self.epochs_in_phase[self.phase] += 1

    @override
    def on_fit_end(self, trainer: Trainer, pl_module: Any) -> None:
        set_trainable(pl_module.space, True)
        set_trainable(pl_module.controller, True)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"phase": self.phase, "epochs_in_phase": dict(self.epochs_in_phase),
                "controller_epochs": self.controller_epochs, "supernet_epochs": self.supernet_epochs}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.phase = state_dict.get("phase", "")
        self.epochs_in_phase.update(state_dict.get("epochs_in_phase", {}))
