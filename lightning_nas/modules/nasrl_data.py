"""``NASRLData``: what a NAS-RL search gives Lightning to iterate, and where its children's data comes from.

One Lightning training step of :class:`~lightning_nas.modules.nasrl.NASRLModule` is one controller step, not a
batch: the children it samples are trained and scored on a datamodule's loaders inside the step. Lightning
iterates the training loader of the datamodule it is given (``trainer.fit(..., datamodule=...)``, which is what a
recipe's ``data:`` section becomes), so NAS-RL is given this wrapper: its ``train_dataloader`` serves the module's
``controller_steps`` placeholder items per epoch, and the children's datamodule is :attr:`NASRLData.data`, which
the module reads through its public loaders. Everything else a datamodule does for a run (``prepare_data``,
``setup``, the pre-run ``check_data``, its ``state_dict`` in checkpoints, ``num_classes``) is the wrapped one's.

``lightning-nas fit`` wraps a recipe's datamodule for a ``NASRLModule`` (``LightningNASCLI.before_fit``), so recipes
and their command-line overrides (``--data.init_args.batch_size=...``) name the datamodule itself. In Python::

    trainer.fit(NASRLModule(LayerTokenSpace()), datamodule=NASRLData(DigitsDataModule()))
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, IterableDataset
from typing_extensions import override

__all__ = ["ControllerSteps", "NASRLData"]


class ControllerSteps(IterableDataset):
    """``n`` placeholder items: one per controller step (iterable, so DDP adds no sampler: every rank steps)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __iter__(self) -> Any:
        return iter(range(self.n))

    def __len__(self) -> int:
        return self.n


def controller_steps_loader(n: int) -> DataLoader:
    """The training loader of a NAS-RL fit: ``n`` controller steps an epoch."""
    return DataLoader(ControllerSteps(n), batch_size=None)


class NASRLData(LightningDataModule):
    """A datamodule whose training loader is the NAS-RL module's controller steps; ``data`` feeds the children.

    Args:
        data: the datamodule the children train on (``train_dataloader``) and are scored on (``val_dataloader``).
    """

    def __init__(self, data: LightningDataModule) -> None:
        super().__init__()
        if not isinstance(data, LightningDataModule):
            raise TypeError(f"NASRLData wraps a LightningDataModule, got {type(data).__name__}")
        self.data = data

    @property
    def num_classes(self) -> Any:
        return getattr(self.data, "num_classes", None)

    @property
    def input_size(self) -> Any:
        return getattr(self.data, "input_size", None)

    def check_data(self) -> None:
        """The wrapped datamodule's pre-run check of its files (the CLI runs it before anything is written)."""
        check = getattr(self.data, "check_data", None)
        if callable(check):
            check()

    @override
    def prepare_data(self) -> None:
        self.data.prepare_data()

    @override
    def setup(self, stage: str) -> None:
        self.data.trainer = self.trainer  # its loaders read the run's rank and world size, as when attached itself
        self.data.setup(stage)

    @override
    def teardown(self, stage: str) -> None:
        self.data.teardown(stage)

    @override
    def train_dataloader(self) -> DataLoader:
        """The controller steps of the module being fitted (its ``controller_steps`` per epoch)."""
        module = self.trainer.lightning_module if self.trainer is not None else None
        steps = getattr(getattr(module, "hparams", None), "controller_steps", None)
        if steps is None:
            raise TypeError("NASRLData serves the controller steps of a NASRLModule; fit one with it "
                            f"(got {type(module).__name__})")
        return controller_steps_loader(int(steps))

    @override
    def state_dict(self) -> dict[str, Any]:
        return self.data.state_dict()

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.data.load_state_dict(state_dict)
