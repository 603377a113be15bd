"""Tests of the embedded default: scikit-learn's digits as 32×32 RGB images."""

from __future__ import annotations

import time

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from torch import Tensor, nn

from lightning_nas.datamodules import DigitsDataModule
from lightning_nas.datamodules.digits import load_digits_tensors


@pytest.fixture(scope="module")
def dm() -> DigitsDataModule:
    dm = DigitsDataModule(batch_size=64)
    dm.prepare_data()
    dm.setup()
    return dm


def test_all_1797_images_in_fixed_splits(dm: DigitsDataModule) -> None:
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (1293, 144, 360)
    assert len(dm.train_dataset) + len(dm.val_dataset) + len(dm.test_dataset) == 1797
    assert not set(dm.train_indices) & set(dm.val_indices)


def test_images_are_32px_rgb_in_unit_range() -> None:
    images, labels = load_digits_tensors()
    assert images.shape == (1797, 3, 32, 32) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1 and torch.equal(images[:, 0], images[:, 2])
    assert labels.dtype == torch.int64 and labels.unique().tolist() == list(range(10))


def test_batches_and_attributes(dm: DigitsDataModule) -> None:
    assert (dm.num_classes, dm.input_size, dm.in_channels) == (10, 32, 3)
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        images, labels = next(iter(loader))
        assert images.shape == (64, 3, 32, 32) and images.dtype == torch.float32
        assert labels.dtype == torch.int64
    test = torch.cat([x for x, _ in dm.test_dataloader()])
    assert abs(test.mean().item()) < 0.1 and abs(test.std().item() - 1) < 0.1  # normalized


def test_test_split_is_stratified_and_ignores_seed() -> None:
    a, b = DigitsDataModule(seed=1), DigitsDataModule(seed=2)
    a.setup(), b.setup()
    assert torch.equal(a._test_source.images, b._test_source.images)
    assert a.val_indices != b.val_indices
    counts = torch.bincount(a._test_source.labels, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37


def test_calibration_batches_repeat_exactly(dm: DigitsDataModule) -> None:
    first, second = (list(dm.calibration_dataloader(batch_size=32, num_batches=3)) for _ in range(2))
    assert len(first) == 3
    for (x1, y1), (x2, y2) in zip(first, second):
        assert x1.shape == (32, 3, 32, 32) and torch.equal(x1, x2) and torch.equal(y1, y2)
    assert len(dm.calibration_dataloader().dataset) == len(dm.train_dataset)


def test_an_epoch_loads_well_under_a_second(dm: DigitsDataModule) -> None:
    start = time.perf_counter()
    n = sum(len(labels) for _, labels in dm.train_dataloader())
    assert n == 1293 and time.perf_counter() - start < 1.0


class _Linear(LightningModule):
    def __init__(self, num_classes: int, input_size: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * input_size**2, num_classes))

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, labels = batch
        return nn.functional.cross_entropy(self.net(images), labels)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        images, labels = batch
        self.log("val/acc", (self.net(images).argmax(1) == labels).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_trainer_fits_and_tests_on_it() -> None:
    dm = DigitsDataModule(batch_size=256)
    model = _Linear(dm.num_classes, dm.input_size)
    trainer = Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=dm)
    assert trainer.callback_metrics["val/acc"] > 0.5
