"""The embedded default data set: scikit-learn's handwritten digits, upscaled to 32×32 RGB.

scikit-learn ships the UCI optical-recognition digits (1,797 real 8×8 grey images of the
digits 0–9, values 0–16) inside its package, so this datamodule needs no download and no
``data_dir``: the quickstart recipe and the tests run anywhere scikit-learn is installed.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms import v2

from lightning_nas.datamodules.base import VisionDataModule
from lightning_nas.datamodules.datasets import Transform

TEST_FRACTION = 0.2
"""Share of the 1,797 images in the fixed test split (stratified by class, seed :data:`TEST_SEED`)."""
TEST_SEED = 0
"""Seed of the test split: fixed, so every run and every ``seed`` tests on the same 360 images."""


class RandomShift:
    """Shift a ``(C, H, W)`` tensor by up to ``pad`` pixels each way, filling with zeros.

    The same as ``RandomCrop(size, padding=pad)``, in plain tensor ops (a few times cheaper
    per sample than the generic ``v2`` dispatch, which matters for tiny in-memory images).

    Args:
        pad: Largest shift in pixels.
    """

    def __init__(self, pad: int) -> None:
        self.pad = pad

    def __call__(self, image: Tensor) -> Tensor:
        dy, dx = torch.randint(0, 2 * self.pad + 1, (2,)).tolist()
        height, width = image.shape[-2:]
        return F.pad(image, [self.pad] * 4)[..., dy : dy + height, dx : dx + width]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(pad={self.pad})"


class Standardize:
    """``(image - mean) / std`` per channel, in plain tensor ops.

    Args:
        mean: Per-channel means.
        std: Per-channel standard deviations.
    """

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __call__(self, image: Tensor) -> Tensor:
        return (image - self.mean) / self.std

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()})"


class TensorImages(Dataset):
    """Images and labels held in memory as tensors, yielding ``(image, int label)`` pairs.

    Args:
        images: Float tensor of shape ``(N, C, H, W)``.
        labels: Integer tensor of shape ``(N,)``.
    """

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels.")
        self.images = images
        self.labels = labels.long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.images[index], int(self.labels[index])


@lru_cache(maxsize=2)
def load_digits_tensors(size: int = 32) -> tuple[Tensor, Tensor]:
    """Load scikit-learn's digits as ``(images, labels)`` tensors (cached: do not modify them in place).

    Args:
        size: Side of the output images; the 8×8 originals are upscaled bilinearly.

    Returns:
        Float32 images ``(1797, 3, size, size)`` in [0, 1] (grey repeated over 3 channels)
        and int64 labels ``(1797,)``.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32)).unsqueeze(1) / 16.0
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False).clamp_(0.0, 1.0)
    return images.repeat(1, 3, 1, 1).contiguous(), torch.from_numpy(digits.target.astype(np.int64))


def digits_test_indices(labels: Tensor) -> tuple[list[int], list[int]]:
    """Split the digits into the fixed official train and test parts.

    A stratified :data:`TEST_FRACTION` (20 %, i.e. 360 images) drawn with seed :data:`TEST_SEED`
    is the test split; the other 1,437 are the training set.

    Args:
        labels: The labels of all 1,797 images.

    Returns:
        ``(train_indices, test_indices)``, each sorted.
    """
    from sklearn.model_selection import train_test_split

    train, test = train_test_split(
        np.arange(len(labels)), test_size=TEST_FRACTION, stratify=labels.numpy(), random_state=TEST_SEED
    )
    return sorted(train.tolist()), sorted(test.tolist())


class DigitsDataModule(VisionDataModule):
    """scikit-learn's 1,797 handwritten digits as 32×32 RGB images, 10 classes: the embedded default.

    The 8×8 images (values 0–16) are scaled to [0, 1], upscaled bilinearly to 32×32 and
    repeated over 3 channels, so networks built for CIFAR run on them unchanged. The official
    test split is a fixed stratified 20 % (360 images, seed 0, independent of ``seed``);
    ``val_split`` is carved out of the remaining 1,437. Everything lives in memory as
    tensors, so an epoch loads in milliseconds. Training augmentation: random crop 32 with
    2 px padding (no flips: digits are not mirror-symmetric).

    Args:
        data_dir: Accepted for a uniform interface and ignored (the data ships with scikit-learn).
        batch_size: Samples per batch.
        num_workers: Loader worker processes; 0 (the default) is fastest for in-memory data.
        val_split: Fraction of the training set held out for the search's validation split.
        seed: Seed of the held-out split.
        pin_memory: Pin batches for faster GPU copies (only when CUDA is available).
        persistent_workers: Keep workers alive between epochs (only when ``num_workers > 0``).
        drop_last: Drop the last incomplete training batch.
        train_transforms: Replace the default training transform (it gets float tensors in [0, 1]).
        eval_transforms: Replace the default evaluation transform.

    Example::

        dm = DigitsDataModule(batch_size=64)
        dm.setup("fit")
        images, labels = next(iter(dm.train_dataloader()))  # (64, 3, 32, 32), (64,)
    """

    name: ClassVar[str] = "digits"
    num_classes: int = 10
    input_size: int = 32
    in_channels: int = 3
    mean: tuple[float, ...] = (0.3053, 0.3053, 0.3053)
    std: tuple[float, ...] = (0.3236, 0.3236, 0.3236)

    def __init__(self, data_dir: str = ".", **kwargs: Any) -> None:
        super().__init__(data_dir, **kwargs)
        self._splits: tuple[TensorImages, TensorImages] | None = None

    def default_train_transforms(self) -> Transform:
        """Random shift by up to 2 px (random crop 32 with 2 px zero padding), normalize."""
        return v2.Compose([RandomShift(2), Standardize(self.mean, self.std)])

    def default_eval_transforms(self) -> Transform:
        """Normalize."""
        return Standardize(self.mean, self.std)

    def check_data_root(self) -> None:
        """Nothing to check: the data ships inside the scikit-learn package."""

    def _load(self) -> tuple[TensorImages, TensorImages]:
        if self._splits is None:
            images, labels = load_digits_tensors(self.input_size)
            train, test = digits_test_indices(labels)
            self._splits = (TensorImages(images[train], labels[train]), TensorImages(images[test], labels[test]))
        return self._splits

    def make_train_dataset(self) -> Dataset:
        """The 1,437 training images (everything outside the fixed test split)."""
        return self._load()[0]

    def make_test_dataset(self) -> Dataset:
        """The fixed stratified test split of 360 images."""
        return self._load()[1]
