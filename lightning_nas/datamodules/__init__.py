"""Datamodules: CIFAR-10/100, Tiny ImageNet, ImageNet and the embedded digits default.

Each carves a fixed, seeded validation split out of its training set for the searches;
the official test split is never searched on.
"""

from lightning_nas.datamodules.base import VisionDataModule
from lightning_nas.datamodules.cifar import CIFAR10DataModule, CIFAR100DataModule
from lightning_nas.datamodules.datasets import DataRootError
from lightning_nas.datamodules.digits import DigitsDataModule
from lightning_nas.datamodules.imagenet import ImageNetDataModule
from lightning_nas.datamodules.text import TextDataModule
from lightning_nas.datamodules.tinyimagenet import TinyImageNetDataModule

__all__ = [
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "DataRootError",
    "DigitsDataModule",
    "ImageNetDataModule",
    "TextDataModule",
    "TinyImageNetDataModule",
    "VisionDataModule",
]
