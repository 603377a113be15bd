"""ImageNet (ILSVRC-2012) datamodule with JPEG decoding straight to tensors."""

from __future__ import annotations

import os
from typing import Any, ClassVar

import torch
from torch.utils.data import Dataset
from torchvision.datasets import DatasetFolder
from torchvision.transforms import v2

from lightning_nas.datamodules.base import VisionDataModule
from lightning_nas.datamodules.datasets import DataRootError, Transform, read_image_rgb

IMAGENET_URL = "https://image-net.org/download.php"
_EXTENSIONS = (".jpeg", ".jpg", ".png")


class ImageNetDataModule(VisionDataModule):
    """ImageNet: 1.28 M training and 50,000 validation images, 1,000 classes.

    Expects ``<data_dir>/train/<wnid>/*.JPEG`` and ``<data_dir>/val/<wnid>/*.JPEG`` (the
    usual layout after sorting the validation images into class folders; classes are the
    sorted folder names, as in ``ImageFolder``); the official
    ``val/`` split serves as the test split. Files are read as bytes and decoded by
    ``torchvision.io.decode_jpeg`` into uint8 tensors (PIL only for non-JPEG files), then
    transformed by tensor-based ``torchvision.transforms.v2``; resizing happens on uint8
    before the float conversion. The loader defaults keep a GPU fed: up to 8 workers,
    pinned memory, persistent workers, 4 batches prefetched per worker.

    Args:
        data_dir: Folder holding ``train/`` and ``val/``.
        batch_size: Samples per batch.
        num_workers: Loader worker processes; ``min(8, os.cpu_count())`` by default.
        val_split: Fraction of the training set held out for the search's validation split.
        seed: Seed of the held-out split.
        pin_memory: Pin batches for faster GPU copies (only when CUDA is available).
        persistent_workers: Keep workers alive between epochs (only when ``num_workers > 0``).
        drop_last: Drop the last incomplete training batch.
        prefetch_factor: Batches each worker loads ahead (only when ``num_workers > 0``).
        input_size: Side of the square network input; evaluation resizes the short side to
            ``input_size / 0.875`` (256 for 224) and centre-crops.
        color_jitter: Strength of brightness/contrast/saturation jitter in training; 0 disables it.
        train_transforms: Replace the default training transform.
        eval_transforms: Replace the default evaluation transform.
    """

    name: ClassVar[str] = "imagenet"
    num_classes: int = 1000
    input_size: int = 224
    in_channels: int = 3
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)

    max_default_workers: ClassVar[int] = 8
    default_prefetch_factor: ClassVar[int | None] = 4

    def __init__(self, data_dir: str = ".", *, input_size: int = 224, color_jitter: float = 0.0,
                 **kwargs: Any) -> None:
        if input_size < 1:
            raise ValueError(f"input_size={input_size!r} must be a positive number of pixels, e.g. 224.")
        if color_jitter < 0:
            raise ValueError(f"color_jitter={color_jitter!r} must be 0 (off) or positive, e.g. 0.4.")
        self.input_size = input_size
        self.color_jitter = color_jitter
        super().__init__(data_dir, **kwargs)

    @property
    def eval_resize(self) -> int:
        """Short side before the evaluation centre crop: ``input_size / 0.875`` (256 for 224)."""
        return int(round(self.input_size / 0.875))

    def default_train_transforms(self) -> Transform:
        """Random resized crop, horizontal flip, optional colour jitter, normalize."""
        steps: list[Transform] = [
            v2.RandomResizedCrop(self.input_size, antialias=True),
            v2.RandomHorizontalFlip(),
        ]
        if self.color_jitter > 0:
            cj = self.color_jitter
            steps.append(v2.ColorJitter(brightness=cj, contrast=cj, saturation=cj))
        steps += [v2.ToDtype(torch.float32, scale=True), self.normalize()]
        return v2.Compose(steps)

    def default_eval_transforms(self) -> Transform:
        """Resize the short side to ``eval_resize``, centre-crop ``input_size``, normalize."""
        return v2.Compose(
            [
                v2.Resize(self.eval_resize, antialias=True),
                v2.CenterCrop(self.input_size),
                v2.ToDtype(torch.float32, scale=True),
                self.normalize(),
            ]
        )

    def check_data_root(self) -> None:
        """Raise :class:`DataRootError` unless ``train/`` and ``val/`` hold class folders.

        Raises:
            DataRootError: Naming the folder, the subfolders looked for and where to get them.
        """
        missing = [split for split in ("train", "val") if not _has_class_folders(os.path.join(self.data_dir, split))]
        if not missing:
            return
        raise DataRootError(
            f"{type(self).__name__}: {os.path.abspath(self.data_dir)!r} does not hold ImageNet; looked for "
            f"train/<wnid>/*.JPEG and val/<wnid>/*.JPEG and found no class folders in "
            f"{' and '.join(m + '/' for m in missing)}. Fix: get ILSVRC-2012 from {IMAGENET_URL}, extract the "
            "training and validation images into train/ and val/ with one folder per class, and set `data_dir` "
            "(CLI: --data.data_dir) to the folder holding them."
        )

    def make_train_dataset(self) -> Dataset:
        """The ``train/`` images as uint8 tensors with integer labels."""
        return DatasetFolder(os.path.join(self.data_dir, "train"), loader=read_image_rgb, extensions=_EXTENSIONS)

    def make_test_dataset(self) -> Dataset:
        """The ``val/`` images as uint8 tensors with integer labels."""
        return DatasetFolder(os.path.join(self.data_dir, "val"), loader=read_image_rgb, extensions=_EXTENSIONS)


def _has_class_folders(path: str) -> bool:
    """Whether ``path`` is a folder with at least one subfolder."""
    if not os.path.isdir(path):
        return False
    with os.scandir(path) as entries:
        return any(entry.is_dir() for entry in entries)
