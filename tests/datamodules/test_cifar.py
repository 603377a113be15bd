"""Tests of the CIFAR-10/100 datamodules on tiny fakes in torchvision's on-disk format."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightning_nas.datamodules import CIFAR10DataModule, CIFAR100DataModule, DataRootError
from tests.helpers.fake_data import write_fake_cifar10, write_fake_cifar100

CASES = [
    pytest.param((CIFAR10DataModule, write_fake_cifar10, "cifar-10-batches-py/data_batch_1"), id="cifar10"),
    pytest.param((CIFAR100DataModule, write_fake_cifar100, "cifar-100-python/train"), id="cifar100"),
]


@pytest.fixture(params=CASES)
def case(request, tmp_path: Path) -> tuple[type[CIFAR10DataModule], Path, str]:
    cls, write, first_file = request.param
    return cls, write(tmp_path, n_train=50, n_test=20), first_file


def test_sizes_and_batches(case) -> None:
    cls, data_dir, _ = case
    dm = cls(str(data_dir), batch_size=8, num_workers=0)
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test")
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (45, 5, 20)
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader(), dm.predict_dataloader()):
        images, labels = next(iter(loader))
        assert images.shape == (min(8, len(loader.dataset)), 3, 32, 32)
        assert images.dtype == torch.float32 and labels.dtype == torch.int64
        assert 0 <= labels.min() and labels.max() < dm.num_classes


def test_split_is_seeded_and_disjoint(case) -> None:
    cls, data_dir, _ = case
    a, b, c = (cls(str(data_dir), num_workers=0, seed=s) for s in (1, 1, 2))
    for dm in (a, b, c):
        dm.setup("fit")
    assert a.val_indices == b.val_indices and a.train_indices == b.train_indices
    assert a.val_indices != c.val_indices
    assert not set(a.train_indices) & set(a.val_indices)


def test_val_uses_eval_transforms_and_train_augments(case) -> None:
    cls, data_dir, _ = case
    dm = cls(str(data_dir), batch_size=64, num_workers=0)
    dm.setup("fit")
    assert torch.equal(next(iter(dm.val_dataloader()))[0], next(iter(dm.val_dataloader()))[0])
    index = dm.train_indices[0]
    torch.manual_seed(0)
    augmented = torch.stack([dm.train_transforms(dm._train_source[index][0]) for _ in range(8)])
    assert not all(torch.equal(augmented[0], x) for x in augmented[1:])


def test_calibration_batches_repeat_exactly(case) -> None:
    cls, data_dir, _ = case
    dm = cls(str(data_dir), batch_size=16, num_workers=0)
    first = list(dm.calibration_dataloader(batch_size=8, num_batches=2))
    second = list(dm.calibration_dataloader(batch_size=8, num_batches=2))
    assert len(first) == 2
    for (x1, y1), (x2, y2) in zip(first, second):
        assert x1.shape == (8, 3, 32, 32) and torch.equal(x1, x2) and torch.equal(y1, y2)


def test_labels_and_pixels_survive_the_round_trip(case) -> None:
    cls, data_dir, _ = case
    dm = cls(str(data_dir), num_workers=0)
    dm.setup("test")
    source = dm._test_source
    assert len(source.classes) == dm.num_classes
    image, label = source[0]
    assert image.size == (32, 32) and 0 <= label < dm.num_classes


def test_missing_files_error_names_folder_files_and_fix(case, tmp_path: Path) -> None:
    cls, _, first_file = case
    empty = tmp_path / "empty"
    empty.mkdir()
    dm = cls(str(empty), num_workers=0)
    for hook in (dm.prepare_data, lambda: dm.setup("fit")):
        with pytest.raises(DataRootError) as err:
            hook()
        message = str(err.value)
        assert str(empty) in message and first_file in message
        assert "download: true" in message and "--data.download true" in message


def test_one_missing_batch_is_reported(tmp_path: Path) -> None:
    data_dir = write_fake_cifar10(tmp_path, n_train=10, n_test=5)
    (data_dir / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataRootError, match="missed cifar-10-batches-py/data_batch_3"):
        CIFAR10DataModule(str(data_dir), num_workers=0).setup("fit")


def test_download_is_skipped_when_the_files_are_there(tmp_path: Path) -> None:
    data_dir = write_fake_cifar10(tmp_path, n_train=10, n_test=5)
    dm = CIFAR10DataModule(str(data_dir), download=True, num_workers=0)
    dm.prepare_data()  # would try the network (and fail offline) if it did not find the files
    dm.setup("fit")
    assert len(dm.train_dataset) + len(dm.val_dataset) == 10
