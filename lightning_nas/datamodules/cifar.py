"""CIFAR-10 and CIFAR-100 datamodules (torchvision's on-disk format)."""

from __future__ import annotations

import os
import pickle
from typing import Any, ClassVar

import torch
from torch.utils.data import Dataset
from torchvision import datasets
from torchvision.transforms import v2

from lightning_nas.datamodules.base import VisionDataModule
from lightning_nas.datamodules.datasets import DataRootError, Transform
from lightning_nas.datamodules.on_device import BatchAugment, PadCropFlip


def _batch_file_problem(path: str, is_meta: bool, key: str) -> str | None:
    """What is wrong with one CIFAR pickle (``None`` when it reads as torchvision expects)."""
    try:
        with open(path, "rb") as f:
            entry = pickle.load(f, encoding="latin1")
    except Exception as err:  # noqa: BLE001 - any failure to unpickle is the answer
        return f"{type(err).__name__}: {err}"
    if not isinstance(entry, dict):
        return f"it holds a {type(entry).__name__}, not a dict"
    if is_meta:
        return None if key in entry else f"no {key!r} entry"
    data = entry.get("data")
    labels = entry.get("labels", entry.get("fine_labels"))
    if data is None or labels is None:
        return "no 'data' and labels entries"
    if getattr(data, "ndim", 0) != 2 or data.shape[1] != 3072 or len(labels) != data.shape[0]:
        return f"'data' of shape {getattr(data, 'shape', None)} with {len(labels)} labels, expected (N, 3072)"
    return None


class _CIFAR10Files(datasets.CIFAR10):
    """torchvision's CIFAR-10 reader that checks the files exist but not their MD5 sums.

    Hashing 180 MB on every run buys nothing once the files are in place, and it would
    reject the small fakes the tests write in the same format. A download still verifies
    the archive's MD5, as torchvision does.
    """

    train_list: ClassVar[list[list[str | None]]] = [[name, None] for name, _ in datasets.CIFAR10.train_list]
    test_list: ClassVar[list[list[str | None]]] = [[name, None] for name, _ in datasets.CIFAR10.test_list]
    meta: ClassVar[dict[str, str | None]] = {**datasets.CIFAR10.meta, "md5": None}


class _CIFAR100Files(datasets.CIFAR100):
    """torchvision's CIFAR-100 reader that checks the files exist but not their MD5 sums."""

    train_list: ClassVar[list[list[str | None]]] = [[name, None] for name, _ in datasets.CIFAR100.train_list]
    test_list: ClassVar[list[list[str | None]]] = [[name, None] for name, _ in datasets.CIFAR100.test_list]
    meta: ClassVar[dict[str, str | None]] = {**datasets.CIFAR100.meta, "md5": None}


class CIFAR10DataModule(VisionDataModule):
    """CIFAR-10: 50,000 training and 10,000 test images of 32×32 pixels, 10 classes.

    Expects ``<data_dir>/cifar-10-batches-py/`` as extracted from the official archive
    (``data_batch_1`` … ``data_batch_5``, ``test_batch``, ``batches.meta``); with
    ``download=True`` it fetches the archive there first (on rank 0, in ``prepare_data``).
    Training augmentation: random crop 32 with 4 px padding, horizontal flip.

    On a GPU, ``on_device=True`` holds the 45,000 training images on the GPU (138 MB of ``uint8``) and does the
    crop, flip and normalisation there, a batch at a time (one gather and one multiply-add per batch): no loader
    workers, no per-image Python, no image copies per step. The order, the DDP shards, exact resume and each
    sample's augmentation seed are those of the default loader (the crop offsets drawn from them differ); the
    validation, test and calibration loaders are unchanged. Lightning's "does not have many workers" hint does not
    apply to that loader.

    Args:
        data_dir: Folder holding (or receiving) ``cifar-10-batches-py/``.
        batch_size: Samples per batch.
        num_workers: Loader worker processes.
        val_split: Fraction of the training set held out for the search's validation split.
        seed: Seed of the held-out split.
        pin_memory: Pin batches for faster GPU copies (only when CUDA is available).
        persistent_workers: Keep workers alive between epochs (only when ``num_workers > 0``).
        drop_last: Drop the last incomplete training batch.
        download: Download the data set into ``data_dir`` if its files are missing.
        train_transforms: Replace the default training transform.
        eval_transforms: Replace the default evaluation transform.
        on_device: Hold the training set on the training device and augment it there in batches (see above).

    Example::

        dm = CIFAR10DataModule("data/", download=True)
        trainer.fit(model, datamodule=dm)
        dm = CIFAR10DataModule("data/", on_device=True)  # on a GPU: training batches made on the GPU
    """

    name: ClassVar[str] = "cifar10"
    num_classes: int = 10
    input_size: int = 32
    in_channels: int = 3
    mean: tuple[float, ...] = (0.4914, 0.4822, 0.4465)
    std: tuple[float, ...] = (0.2470, 0.2435, 0.2616)
    dataset_cls: ClassVar[type[datasets.CIFAR10]] = _CIFAR10Files
    archive_name: ClassVar[str] = "cifar-10-python.tar.gz (170 MB)"

    max_default_workers: ClassVar[int] = 4
    supports_on_device: ClassVar[bool] = True

    def __init__(self, data_dir: str = ".", *, download: bool = False, **kwargs: Any) -> None:
        super().__init__(data_dir, **kwargs)
        self.download = download

    def default_train_transforms(self) -> Transform:
        """Random crop 32 (4 px zero padding), horizontal flip, normalize."""
        return v2.Compose(
            [
                v2.ToImage(),
                v2.RandomCrop(32, padding=4),
                v2.RandomHorizontalFlip(),
                v2.ToDtype(torch.float32, scale=True),
                self.normalize(),
            ]
        )

    def device_augment(self) -> BatchAugment:
        """``on_device=True``'s batched version of :meth:`default_train_transforms`."""
        return PadCropFlip(32, 4, self.mean, self.std, flip=True)

    def train_uint8(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The training part as ``uint8 (N, 3, 32, 32)`` and ``int64`` labels: a copy of the arrays in memory."""
        self._setup_train()
        source = self._train_source
        index = torch.tensor(self.train_indices, dtype=torch.int64)
        images = torch.from_numpy(source.data).permute(0, 3, 1, 2).index_select(0, index).contiguous()
        return images, torch.tensor(source.targets, dtype=torch.int64).index_select(0, index)

    def default_eval_transforms(self) -> Transform:
        """Convert to a float tensor and normalize."""
        return v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True), self.normalize()])

    def expected_files(self) -> list[str]:
        """The files the data set needs, relative to ``data_dir``."""
        cls = self.dataset_cls
        names = [name for name, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
        return [f"{cls.base_folder}/{name}" for name in names]

    def download_data(self) -> None:
        """Download and extract the official archive into ``data_dir`` when ``download`` is set."""
        if self.download:
            os.makedirs(self.data_dir, exist_ok=True)
            self.dataset_cls(self.data_dir, train=True, download=True)

    def check_data_root(self) -> None:
        """Raise :class:`DataRootError` if any expected file is missing.

        Raises:
            DataRootError: Naming the folder, the files looked for and how to get them.
        """
        missing = [f for f in self.expected_files() if not os.path.isfile(os.path.join(self.data_dir, f))]
        if not missing:
            return
        raise DataRootError(
            f"{type(self).__name__}: {os.path.abspath(self.data_dir)!r} does not hold the {self.name} files; "
            f"looked for {', '.join(self.expected_files())} and missed {', '.join(missing)}. "
            f"Fix: set `download: true` in the data's init_args (CLI: --data.download true) to fetch "
            f"{self.archive_name} into that folder, or point `data_dir` at the folder that holds "
            f"{self.dataset_cls.base_folder}/."
        )

    def describe_unreadable(self, err: Exception, train: bool) -> DataRootError:
        """Name the first batch file of the split that is truncated or not a CIFAR batch."""
        cls = self.dataset_cls
        names = [name for name, _ in (cls.train_list if train else cls.test_list)] + [cls.meta["filename"]]
        for name in names:
            path = os.path.join(self.data_dir, cls.base_folder, name)
            problem = _batch_file_problem(path, is_meta=name == cls.meta["filename"], key=cls.meta["key"])
            if problem:
                return DataRootError(
                    f"{type(self).__name__}: {path!r} is not a {self.name} batch file ({problem}): it is truncated or "
                    f"of another data set. Fix: delete {os.path.join(self.data_dir, cls.base_folder)!r} and set "
                    f"`download: true` (CLI: --data.init_args.download true) to fetch {self.archive_name} again."
                )
        return super().describe_unreadable(err, train)

    def make_train_dataset(self) -> Dataset:
        """The 50,000 training images as PIL images with integer labels."""
        return self.dataset_cls(self.data_dir, train=True, download=False)

    def make_test_dataset(self) -> Dataset:
        """The 10,000 test images as PIL images with integer labels."""
        return self.dataset_cls(self.data_dir, train=False, download=False)


class CIFAR100DataModule(CIFAR10DataModule):
    """CIFAR-100: 50,000 training and 10,000 test images of 32×32 pixels, 100 fine classes.

    Expects ``<data_dir>/cifar-100-python/`` (``train``, ``test``, ``meta``); otherwise as
    :class:`CIFAR10DataModule`, whose arguments it takes.
    """

    name: ClassVar[str] = "cifar100"
    num_classes: int = 100
    mean: tuple[float, ...] = (0.5071, 0.4865, 0.4409)
    std: tuple[float, ...] = (0.2673, 0.2564, 0.2762)
    dataset_cls: ClassVar[type[datasets.CIFAR10]] = _CIFAR100Files
    archive_name: ClassVar[str] = "cifar-100-python.tar.gz (169 MB)"

