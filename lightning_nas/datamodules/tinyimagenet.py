"""Tiny ImageNet datamodule: 200 classes of 64×64 images in the ``tiny-imagenet-200`` layout."""

from __future__ import annotations

import os
from typing import ClassVar

import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms import v2

from lightning_nas.datamodules.base import VisionDataModule
from lightning_nas.datamodules.datasets import DataRootError, Transform, read_image_rgb
from lightning_nas.datamodules.on_device import BatchAugment, RandomResizedCropFlip

TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
_FOLDER = "tiny-imagenet-200"
_EXPECTED = ("wnids.txt", "train/<wnid>/images/*.JPEG", "val/images/*.JPEG", "val/val_annotations.txt")


class TinyImageNetFolder(Dataset):
    """The image files of one Tiny ImageNet split as ``(uint8 tensor (3, H, W), label)`` pairs.

    Args:
        root: The ``tiny-imagenet-200`` folder.
        train: The ``train/`` split if true, else the labelled ``val/`` split.

    Attributes:
        classes: The WordNet ids, sorted; a label indexes this list.
        samples: ``(path, label)`` of every image, in a fixed order.
    """

    def __init__(self, root: str, train: bool = True) -> None:
        with open(os.path.join(root, "wnids.txt")) as f:
            self.classes = sorted(line.strip() for line in f if line.strip())
        self.class_to_idx = {wnid: i for i, wnid in enumerate(self.classes)}
        self.samples = self._train_samples(root) if train else self._val_samples(root)

    def _train_samples(self, root: str) -> list[tuple[str, int]]:
        samples = []
        for wnid, label in self.class_to_idx.items():
            folder = os.path.join(root, "train", wnid, "images")
            if not os.path.isdir(folder):
                raise DataRootError(
                    f"Tiny ImageNet: {os.path.abspath(folder)!r} is missing although {wnid} is listed in wnids.txt; "
                    f"re-extract {TINY_IMAGENET_URL}."
                )
            names = sorted(n for n in os.listdir(folder) if n.lower().endswith((".jpeg", ".jpg")))
            samples += [(os.path.join(folder, n), label) for n in names]
        return samples

    def _val_samples(self, root: str) -> list[tuple[str, int]]:
        samples = []
        with open(os.path.join(root, "val", "val_annotations.txt")) as f:
            for line in f:
                fields = line.rstrip("\n").split("\t")
                if len(fields) >= 2:
                    samples.append((os.path.join(root, "val", "images", fields[0]), self.class_to_idx[fields[1]]))
        return sorted(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        path, label = self.samples[index]
        return read_image_rgb(path), label


class TinyImageNetDataModule(VisionDataModule):
    """Tiny ImageNet: 100,000 training and 10,000 labelled validation images, 64×64, 200 classes.

    ``data_dir`` is the unzipped ``tiny-imagenet-200`` folder or its parent. The official
    ``val/`` split (labels in ``val/val_annotations.txt``) serves as the test split, since
    the ``test/`` images carry no labels. Images are decoded from JPEG bytes straight to
    tensors. Training augmentation: random resized crop 64 (scale 0.35–1), horizontal flip.

    On a GPU, ``on_device=True`` decodes the 90,000 training images once (``num_workers`` processes, about a
    minute) into one ``uint8`` tensor on the GPU (1.1 GB) and does the random resized crop (one ``grid_sample``
    over the batch, the same sampling points as ``resized_crop``), the flip and the normalisation there. The
    order, the DDP shards, exact resume and each sample's augmentation seed are those of the default loader; the
    validation, test and calibration loaders are unchanged.

    Args:
        data_dir: The ``tiny-imagenet-200`` folder or the folder holding it.
        batch_size: Samples per batch.
        num_workers: Loader worker processes.
        val_split: Fraction of the training set held out for the search's validation split.
        seed: Seed of the held-out split.
        pin_memory: Pin batches for faster GPU copies (only when CUDA is available).
        persistent_workers: Keep workers alive between epochs (only when ``num_workers > 0``).
        drop_last: Drop the last incomplete training batch.
        train_transforms: Replace the default training transform.
        eval_transforms: Replace the default evaluation transform.
        on_device: Hold the training set on the training device and augment it there in batches (see above).
    """

    name: ClassVar[str] = "tinyimagenet"
    num_classes: int = 200
    input_size: int = 64
    in_channels: int = 3
    mean: tuple[float, ...] = (0.4802, 0.4481, 0.3975)
    std: tuple[float, ...] = (0.2770, 0.2691, 0.2821)
    max_default_workers: ClassVar[int] = 8
    supports_on_device: ClassVar[bool] = True

    @property
    def root(self) -> str:
        """The ``tiny-imagenet-200`` folder: ``data_dir`` itself or ``data_dir/tiny-imagenet-200``."""
        nested = os.path.join(self.data_dir, _FOLDER)
        if not os.path.isfile(os.path.join(self.data_dir, "wnids.txt")) and os.path.isdir(nested):
            return nested
        return self.data_dir

    def default_train_transforms(self) -> Transform:
        """Random resized crop 64 (scale 0.35–1), horizontal flip, normalize."""
        return v2.Compose(
            [
                v2.RandomResizedCrop(self.input_size, scale=(0.35, 1.0), antialias=True),
                v2.RandomHorizontalFlip(),
                v2.ToDtype(torch.float32, scale=True),
                self.normalize(),
            ]
        )

    def device_augment(self) -> BatchAugment:
        """``on_device=True``'s batched version of :meth:`default_train_transforms`."""
        return RandomResizedCropFlip(self.input_size, (0.35, 1.0), self.mean, self.std, flip=True)

    def default_eval_transforms(self) -> Transform:
        """Resize and centre-crop to 64 (a no-op on the official images), normalize."""
        return v2.Compose(
            [
                v2.Resize(self.input_size, antialias=True),
                v2.CenterCrop(self.input_size),
                v2.ToDtype(torch.float32, scale=True),
                self.normalize(),
            ]
        )

    def check_data_root(self) -> None:
        """Raise :class:`DataRootError` unless the Tiny ImageNet files are in place.

        Raises:
            DataRootError: Naming the folder, the files looked for and where to get them.
        """
        root = self.root
        missing = [
            name
            for name in ("wnids.txt", "train", "val/images", "val/val_annotations.txt")
            if not os.path.exists(os.path.join(root, name))
        ]
        if not missing:
            return
        raise DataRootError(
            f"{type(self).__name__}: {os.path.abspath(root)!r} (nor a {_FOLDER}/ folder inside it) does not hold "
            f"Tiny ImageNet; looked for {', '.join(_EXPECTED)} and missed {', '.join(missing)}. "
            f"Fix: download {TINY_IMAGENET_URL}, unzip it, and set `data_dir` (CLI: --data.data_dir) to the "
            f"{_FOLDER} folder or the folder holding it."
        )

    def make_train_dataset(self) -> Dataset:
        """The ``train/`` images as uint8 tensors with integer labels."""
        return TinyImageNetFolder(self.root, train=True)

    def make_test_dataset(self) -> Dataset:
        """The labelled ``val/`` images as uint8 tensors with integer labels."""
        return TinyImageNetFolder(self.root, train=False)
