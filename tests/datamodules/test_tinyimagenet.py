"""Tests of the Tiny ImageNet datamodule on a tiny fake in the ``tiny-imagenet-200`` layout."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightning_nas.datamodules import DataRootError, TinyImageNetDataModule
from lightning_nas.datamodules.tinyimagenet import TinyImageNetFolder
from tests.helpers.fake_data import write_fake_tinyimagenet


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_fake_tinyimagenet(tmp_path_factory.mktemp("tiny"), n_classes=3, per_class=10, val_per_class=3)


@pytest.mark.parametrize("nested", [False, True], ids=["parent", "folder"])
def test_accepts_the_folder_or_its_parent(data_dir: Path, nested: bool) -> None:
    root = data_dir / "tiny-imagenet-200" if nested else data_dir
    dm = TinyImageNetDataModule(str(root), num_workers=0)
    dm.prepare_data()
    dm.setup()
    assert Path(dm.root) == data_dir / "tiny-imagenet-200"
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (27, 3, 9)


def test_batches_are_64px_float_images_and_int64_labels(data_dir: Path) -> None:
    dm = TinyImageNetDataModule(str(data_dir), batch_size=4, num_workers=0)
    assert (dm.num_classes, dm.input_size, dm.in_channels) == (200, 64, 3)
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        images, labels = next(iter(loader))
        assert images.shape == (min(4, len(loader.dataset)), 3, 64, 64) and images.dtype == torch.float32
        assert labels.dtype == torch.int64 and labels.max() < 3


def test_labels_follow_sorted_wnids_and_val_annotations(data_dir: Path) -> None:
    root = data_dir / "tiny-imagenet-200"
    train, val = TinyImageNetFolder(str(root), train=True), TinyImageNetFolder(str(root), train=False)
    wnids = sorted((root / "wnids.txt").read_text().split())
    assert train.classes == wnids
    assert all(Path(path).parts[-3] == wnids[label] for path, label in train.samples)
    annotated = dict(line.split("\t")[:2] for line in (root / "val" / "val_annotations.txt").read_text().splitlines())
    assert all(wnids[label] == annotated[Path(path).name] for path, label in val.samples)


def test_greyscale_jpeg_decodes_to_three_channels(data_dir: Path) -> None:
    train = TinyImageNetFolder(str(data_dir / "tiny-imagenet-200"), train=True)
    grey = next(i for i, (path, _) in enumerate(train.samples) if path.endswith("_0.JPEG"))
    image, _ = train[grey]
    assert image.shape == (3, 64, 64) and image.dtype == torch.uint8
    assert torch.equal(image[0], image[1])


def test_split_is_seeded_and_disjoint(data_dir: Path) -> None:
    a, b, c = (TinyImageNetDataModule(str(data_dir), num_workers=0, seed=s, val_split=0.3) for s in (0, 0, 1))
    for dm in (a, b, c):
        dm.setup("fit")
    assert a.val_indices == b.val_indices != c.val_indices
    assert not set(a.train_indices) & set(a.val_indices)


def test_calibration_batches_repeat_exactly(data_dir: Path) -> None:
    dm = TinyImageNetDataModule(str(data_dir), num_workers=0)
    first, second = (next(iter(dm.calibration_dataloader(batch_size=6, num_batches=1))) for _ in range(2))
    assert first[0].shape == (6, 3, 64, 64)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_missing_root_error_names_folder_files_and_page(tmp_path: Path) -> None:
    dm = TinyImageNetDataModule(str(tmp_path), num_workers=0)
    with pytest.raises(DataRootError) as err:
        dm.setup("fit")
    message = str(err.value)
    assert str(tmp_path) in message and "wnids.txt" in message and "val/val_annotations.txt" in message
    assert "http://cs231n.stanford.edu/tiny-imagenet-200.zip" in message and "--data.data_dir" in message
