"""Tests of the ImageNet datamodule on a tiny fake ``train/<wnid>``, ``val/<wnid>`` tree of JPEGs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from lightning_nas.datamodules import DataRootError, ImageNetDataModule
from lightning_nas.datamodules import datasets as base_module
from lightning_nas.datamodules.datasets import read_image_rgb
from tests.helpers.fake_data import write_fake_imagenet


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_fake_imagenet(tmp_path_factory.mktemp("imagenet"), n_classes=3, per_class=6, val_per_class=2)


def test_sizes_and_224px_batches(data_dir: Path) -> None:
    dm = ImageNetDataModule(str(data_dir), batch_size=4, num_workers=0)
    dm.prepare_data()
    dm.setup()
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (16, 2, 6)
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        images, labels = next(iter(loader))
        assert images.shape[1:] == (3, 224, 224) and images.dtype == torch.float32
        assert labels.dtype == torch.int64 and labels.max() < 3


def test_input_size_sets_crop_and_eval_resize(data_dir: Path) -> None:
    dm = ImageNetDataModule(str(data_dir), batch_size=2, num_workers=0, input_size=64, color_jitter=0.4)
    assert (dm.input_size, dm.eval_resize, dm.num_classes) == (64, 73, 1000)
    assert ImageNetDataModule(str(data_dir)).eval_resize == 256
    assert next(iter(dm.train_dataloader()))[0].shape == (2, 3, 64, 64)
    assert next(iter(dm.val_dataloader()))[0].shape == (2, 3, 64, 64)


def test_jpeg_files_decode_with_decode_jpeg_and_others_with_pil(data_dir: Path, monkeypatch) -> None:
    calls = []
    real = base_module.decode_jpeg
    monkeypatch.setattr(base_module, "decode_jpeg", lambda *a, **k: calls.append(1) or real(*a, **k))
    folder = data_dir / "train" / sorted(os.listdir(data_dir / "train"))[0]
    grey, png, colour = (read_image_rgb(str(folder / name)) for name in sorted(os.listdir(folder))[:3])
    assert len(calls) == 2  # the PNG under a .JPEG name went through PIL
    for image in (grey, png, colour):
        assert image.shape == (3, 72, 96) and image.dtype == torch.uint8
    assert torch.equal(grey[0], grey[2])


def test_loader_defaults_keep_a_gpu_fed(data_dir: Path) -> None:
    dm = ImageNetDataModule(str(data_dir))
    assert dm.num_workers == min(8, os.cpu_count() or 1)
    loader = ImageNetDataModule(str(data_dir), num_workers=2).val_dataloader()
    assert loader.persistent_workers and loader.prefetch_factor == 4
    assert loader.pin_memory == torch.cuda.is_available()


def test_split_is_seeded_and_disjoint(data_dir: Path) -> None:
    a, b, c = (ImageNetDataModule(str(data_dir), num_workers=0, seed=s, val_split=0.25) for s in (3, 3, 4))
    for dm in (a, b, c):
        dm.setup("fit")
    assert a.val_indices == b.val_indices != c.val_indices
    assert not set(a.train_indices) & set(a.val_indices)


def test_calibration_batches_repeat_exactly(data_dir: Path) -> None:
    dm = ImageNetDataModule(str(data_dir), num_workers=0, input_size=32)
    first, second = (list(dm.calibration_dataloader(batch_size=4, num_batches=2)) for _ in range(2))
    assert len(first) == 2
    for (x1, y1), (x2, y2) in zip(first, second):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_missing_root_error_names_subfolders_and_page(tmp_path: Path) -> None:
    (tmp_path / "train" / "n01").mkdir(parents=True)
    with pytest.raises(DataRootError) as err:
        ImageNetDataModule(str(tmp_path), num_workers=0).prepare_data()
    message = str(err.value)
    assert str(tmp_path) in message and "train/<wnid>/*.JPEG" in message and "val/<wnid>/*.JPEG" in message
    assert "in val/." in message and "https://image-net.org/download.php" in message


@pytest.mark.parametrize("kwargs", [{"input_size": 0}, {"color_jitter": -0.1}])
def test_bad_options_fail_in_init(kwargs: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        ImageNetDataModule(".", **kwargs)
