"""The shared base of every datamodule: seeded held-out split, loaders and transforms.

A data set subclasses :class:`VisionDataModule` and adds only what differs: its class
attributes (``name``, ``num_classes``, ``input_size``, ``in_channels``, ``mean``, ``std``),
its default transforms, a check that the data root holds its files, and the constructors
of its untransformed train and test data sets. The base turns those into the loaders:

- ``train_dataloader``: the training set minus the held-out part, train transforms;
- ``val_dataloader``: the held-out part of the *training* set, eval transforms (the
  searches score candidates on it, so the official test split is never searched on);
- ``test_dataloader`` / ``predict_dataloader``: the official test (or val) split;
- ``calibration_dataloader``: a fixed sequence of augmented training batches for
  BatchNorm re-calibration, identical on every call.

With ``on_device=True`` (data sets that set ``supports_on_device``: CIFAR-10/100, Tiny ImageNet) the training
loader instead holds the training part on the training device as one ``uint8`` tensor and augments there a
batch at a time (:mod:`lightning_nas.datamodules.on_device`), with the same order, sharding and resume.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from lightning_nas.datamodules.datasets import (
    DataRootError,
    ToImageSize,
    Transform,
    TransformedSubset,
    check_val_split,
    default_num_workers,
    split_indices,
)
from lightning_nas.datamodules.on_device import BatchAugment, DeviceImages, as_batch
from lightning_nas.datamodules.resumable import EpochSampler, ResumableDataLoader, run_seed
from lightning_nas.errors import ConfigError, MissingFileError


class VisionDataModule(LightningDataModule):
    """Base of the image-classification datamodules.

    Subclasses set the class attributes and implement :meth:`default_train_transforms`,
    :meth:`default_eval_transforms`, :meth:`check_data_root`, :meth:`make_train_dataset`
    and :meth:`make_test_dataset`. ``num_classes``, ``input_size`` and ``in_channels`` can be
    read right after ``__init__`` (the CLI links them into the model).

    Args:
        data_dir: Folder holding the data set's files.
        batch_size: Samples per batch.
        num_workers: Loader worker processes; 0 loads in the main process; ``None``: the data set's default
            (``min(max_default_workers, cpu count)``).
        val_split: Fraction of the training set held out as the validation split, in (0, 1).
        seed: Seed of the held-out split (and of the calibration batches).
        pin_memory: Pin batches for faster host-to-GPU copies (only when CUDA is available).
        persistent_workers: Keep workers alive between epochs (only when ``num_workers > 0``).
        drop_last: Drop the last incomplete training batch.
        prefetch_factor: Batches each worker loads ahead (only when ``num_workers > 0``);
            ``None``: the data set's default (PyTorch's when it has none).
        train_transforms: Replace :meth:`default_train_transforms`.
        eval_transforms: Replace :meth:`default_eval_transforms`.
        on_device: Hold the training part on the training device (the trainer's root device; the CPU without a
            trainer) as one ``uint8`` tensor and crop/flip/normalise it there in batches (data sets with
            ``supports_on_device``), instead of loader workers with per-sample transforms. Same order, DDP shards
            and exact resume (:mod:`~lightning_nas.datamodules.on_device`); ``num_workers``/``pin_memory`` then
            apply to the other loaders only. Off by default.

    Raises:
        ValueError: If ``val_split`` is not in (0, 1) or ``batch_size``/``num_workers`` is invalid, or
            ``on_device`` is set on a data set without it or together with ``train_transforms``.
    """

    name: ClassVar[str] = ""
    num_classes: int = 0
    input_size: int = 0
    in_channels: int = 3
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    max_default_workers: ClassVar[int] = 0  # num_workers=None: min(this, cpu count) workers
    default_prefetch_factor: ClassVar[int | None] = None
    supports_on_device: ClassVar[bool] = False  # defines device_augment(): on_device=True is allowed

    def __init__(
        self,
        data_dir: str = ".",
        batch_size: int = 128,
        num_workers: int | None = None,
        val_split: float = 0.1,
        seed: int = 42,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        drop_last: bool = False,
        prefetch_factor: int | None = None,
        train_transforms: Transform | None = None,
        eval_transforms: Transform | None = None,
        on_device: bool = False,
    ) -> None:
        super().__init__()
        if num_workers is None:
            num_workers = default_num_workers(self.max_default_workers) if self.max_default_workers else 0
        if prefetch_factor is None:
            prefetch_factor = self.default_prefetch_factor
        check_val_split(val_split)
        if batch_size < 1:
            raise ConfigError(f"batch_size={batch_size!r} must be at least 1.")
        if num_workers < 0:
            raise ConfigError(f"num_workers={num_workers!r} must be 0 (load in the main process) or more.")
        if on_device and not self.supports_on_device:
            raise ConfigError(
                f"{type(self).__name__} does not support on_device=True (the training set held on the GPU): "
                "CIFAR10DataModule, CIFAR100DataModule and TinyImageNetDataModule do. Drop `on_device`."
            )
        if on_device and train_transforms is not None:
            raise ConfigError(
                f"{type(self).__name__}: on_device=True augments with its own batched crop/flip, so it cannot apply "
                "`train_transforms`; drop one of the two."
            )
        self.data_dir = str(data_dir)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.val_split = float(val_split)
        self.seed = seed
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.drop_last = drop_last
        self.prefetch_factor = prefetch_factor
        self.on_device = bool(on_device)
        self.train_transforms = train_transforms or self.default_train_transforms()
        self.eval_transforms = eval_transforms or self.default_eval_transforms()
        self.train_indices: list[int] = []
        self.val_indices: list[int] = []
        self._train_source: Dataset | None = None
        self._test_source: Dataset | None = None
        self._calibration: dict[tuple[int, int | None], DataLoader] = {}
        self._train_loader: ResumableDataLoader | None = None
        self._train_resume: dict[str, Any] | None = None
        self._device_train: DeviceImages | None = None

    @property
    def dims(self) -> tuple[int, int, int]:
        """The shape ``(C, H, W)`` of one input image."""
        return (self.in_channels, self.input_size, self.input_size)

    # What a data set defines.

    def default_train_transforms(self) -> Transform:
        """Return the training transform: augmentation, then conversion to a normalized float tensor."""
        raise NotImplementedError(f"{type(self).__name__} must define this.")

    def default_eval_transforms(self) -> Transform:
        """Return the evaluation transform: deterministic conversion to a normalized float tensor."""
        raise NotImplementedError(f"{type(self).__name__} must define this.")

    def check_data_root(self) -> None:
        """Raise :class:`DataRootError` naming the folder, the missing files and the fix."""
        raise NotImplementedError(f"{type(self).__name__} must define this.")

    def make_train_dataset(self) -> Dataset:
        """Return the untransformed official training set of ``(image, label)`` pairs."""
        raise NotImplementedError(f"{type(self).__name__} must define this.")

    def make_test_dataset(self) -> Dataset:
        """Return the untransformed official test (or validation) set of ``(image, label)`` pairs."""
        raise NotImplementedError(f"{type(self).__name__} must define this.")

    def download_data(self) -> None:
        """Fetch the data set into ``data_dir``, where the data set supports it (a no-op here)."""

    def device_augment(self) -> BatchAugment:
        """The batched training augmentation of ``on_device=True`` (data sets with ``supports_on_device``)."""
        raise NotImplementedError(f"{type(self).__name__} has no on-device augmentation.")

    def train_uint8(self) -> tuple[Tensor, Tensor]:
        """The training part (``train_indices``) as ``uint8 (N, C, H, W)`` images and ``int64`` labels, on the CPU.

        Reads every image once through a loader (``num_workers`` processes), each made ``input_size`` square
        (:class:`ToImageSize`); a data set held in memory in that form overrides this with a copy.
        """
        self._setup_train()
        subset = TransformedSubset(self._train_source, self.train_indices, ToImageSize(self.input_size))
        loader = DataLoader(subset, batch_size=256, num_workers=self.num_workers)
        images, labels = zip(*loader) if len(subset) else ((), ())
        return torch.cat(images), torch.cat(labels).long()

    def normalize(self) -> v2.Normalize:
        """Return the data set's normalization of a float image tensor."""
        return v2.Normalize(mean=list(self.mean), std=list(self.std))

    # Lightning hooks.

    def prepare_data(self) -> None:
        """Download if asked and supported, then check the data root (rank 0 only)."""
        self.download_data()
        self.check_data_root()

    def setup(self, stage: str | None = None) -> None:
        """Check the data root and build the data sets the stage needs (every rank).

        Args:
            stage: ``"fit"``, ``"validate"``, ``"test"``, ``"predict"`` or ``None`` for all.
        """
        if stage in (None, "fit", "validate"):
            self._setup_train()
        if stage in (None, "test", "predict"):
            self._setup_test()

    def check_data(self) -> None:
        """Read the training and test sets once (the loaders reuse them), before any run folder exists.

        Raises:
            DataRootError: naming the missing, truncated or foreign file and how to get a good copy.
        """
        self._setup_train()
        self._setup_test()

    def describe_unreadable(self, err: Exception, train: bool) -> DataRootError:
        """The one-line error for a data set that failed to load (a data set names the bad file here)."""
        split = "training" if train else "test"
        return DataRootError(
            f"{type(self).__name__}: could not read the {self.name} {split} set in {os.path.abspath(self.data_dir)!r} "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); its files are damaged or of "
            "another data set: replace them with the original ones."
        )

    def _read(self, make: Callable[[], Dataset], train: bool) -> Dataset:
        self.check_data_root()
        try:
            return make()
        except MissingFileError:
            raise
        except Exception as err:  # a truncated or foreign file: name it instead of a bare unpickling error
            raise self.describe_unreadable(err, train) from err

    def _setup_train(self) -> None:
        if self._train_source is not None:
            return
        source = self._read(self.make_train_dataset, train=True)
        self.train_indices, self.val_indices = split_indices(len(source), self.val_split, self.seed)
        self._train_source = source

    def _setup_test(self) -> None:
        if self._test_source is not None:
            return
        self._test_source = self._read(self.make_test_dataset, train=False)

    # Data sets and loaders.

    @property
    def train_dataset(self) -> TransformedSubset:
        """The training set minus the held-out part, with the train transforms."""
        self._setup_train()
        return TransformedSubset(self._train_source, self.train_indices, self.train_transforms)

    @property
    def val_dataset(self) -> TransformedSubset:
        """The held-out part of the training set, with the eval transforms."""
        self._setup_train()
        return TransformedSubset(self._train_source, self.val_indices, self.eval_transforms)

    @property
    def test_dataset(self) -> TransformedSubset:
        """The official test (or validation) split, with the eval transforms."""
        self._setup_test()
        return TransformedSubset(self._test_source, range(len(self._test_source)), self.eval_transforms)

    def train_dataloader(self) -> DataLoader:
        """Shuffled, augmented batches of the training part, resumable at any batch.

        The order is a function of ``(seed, seed_everything's seed, epoch, rank)``, each sample's augmentation
        of ``(seed, epoch, index)`` (:class:`~lightning_nas.datamodules.resumable.EpochSampler`); under DDP
        each rank reads its share.
        """
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        dataset = self.device_train_dataset() if self.on_device else self.train_dataset
        sampler = EpochSampler(dataset, num_replicas=world, rank=rank, seed=run_seed(self.seed),
                               drop_last=self.drop_last)
        if self.on_device:  # batches come out of the dataset whole, on the device: no workers, no collation
            loader = ResumableDataLoader(dataset, batch_size=self.batch_size, sampler=sampler, collate_fn=as_batch,
                                         generator=torch.Generator().manual_seed(self.seed), drop_last=self.drop_last)
        else:
            loader = self._loader(dataset, drop_last=self.drop_last, sampler=sampler)
        if self._train_resume is not None:
            loader.load_state_dict(self._train_resume)
        self._train_loader = loader
        return loader

    def device_train_dataset(self, device: torch.device | str | None = None) -> DeviceImages:
        """The training part held on ``device``, augmented there.

        ``device`` defaults to the trainer's root device; without a trainer, to where it was put last (else the
        CPU). Built once per device: read (:meth:`train_uint8`), then copied over in one go.
        """
        if device is None and self.trainer is None and self._device_train is not None:
            return self._device_train
        if device is None:
            device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:  # "cuda" is the current device: compare with its index
            device = torch.device("cuda", torch.cuda.current_device())
        if self._device_train is None or self._device_train.device != device:
            self._device_train = None  # free the old copy before making the new one
            images, labels = self.train_uint8()
            self._device_train = DeviceImages(images.to(device), labels.to(device), self.device_augment(),
                                              seed=self.seed)
        return self._device_train

    def state_dict(self) -> dict[str, Any]:
        """The training loader's position and RNG (see :class:`ResumableDataLoader`), saved in checkpoints.

        Saved here as well as by Lightning's fit loop: the fit loop skips restoring its loaders when the module's
        ``configure_optimizers`` read ``trainer.estimated_stepping_batches`` (which builds them early).
        """
        return {"train_loader": self._train_loader.state_dict()} if self._train_loader is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Hand the saved position to the training loaders made from now on (they apply it at the saved epoch)."""
        self._train_resume = state_dict.get("train_loader")

    def val_dataloader(self) -> DataLoader:
        """Batches of the held-out part of the training set (what searches score on)."""
        return self._loader(self.val_dataset)

    def test_dataloader(self) -> DataLoader:
        """Batches of the official test split."""
        return self._loader(self.test_dataset)

    def predict_dataloader(self) -> DataLoader:
        """Batches of the official test split."""
        return self.test_dataloader()

    def calibration_dataloader(self, batch_size: int | None = None, num_batches: int | None = None) -> DataLoader:
        """Training batches in a fixed order with fixed augmentation, for BatchNorm re-calibration.

        The samples are a seeded permutation of the training part and each sample's
        augmentation is seeded by its index, so every call yields identical batches and every
        candidate architecture is re-calibrated on exactly the same data.

        Args:
            batch_size: Samples per batch; defaults to the module's ``batch_size``.
            num_batches: Number of batches; ``None`` uses the whole training part.

        Raises:
            ValueError: If ``batch_size`` or ``num_batches`` is below 1.
        """
        batch_size = self.batch_size if batch_size is None else batch_size
        if batch_size < 1 or (num_batches is not None and num_batches < 1):
            raise ValueError(f"batch_size={batch_size} and num_batches={num_batches} must be at least 1.")
        key = (batch_size, num_batches)
        if key not in self._calibration:
            self._setup_train()
            order = torch.randperm(len(self.train_indices), generator=torch.Generator().manual_seed(self.seed + 1))
            if num_batches is not None:
                order = order[: num_batches * batch_size]
            indices = [self.train_indices[i] for i in order.tolist()]
            dataset = TransformedSubset(self._train_source, indices, self.train_transforms, aug_seed=self.seed)
            self._calibration[key] = self._loader(dataset, batch_size=batch_size)
        return self._calibration[key]

    def _loader(
        self, dataset: Dataset, drop_last: bool = False, batch_size: int | None = None,
        sampler: EpochSampler | None = None,
    ) -> DataLoader:
        workers = self.num_workers > 0
        # an own generator: iterating a loader never draws from (or shifts) the global RNG
        return (DataLoader if sampler is None else ResumableDataLoader)(
            dataset,
            batch_size=batch_size or self.batch_size,
            sampler=sampler,
            generator=torch.Generator().manual_seed(self.seed),
            drop_last=drop_last,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.persistent_workers and workers,
            prefetch_factor=self.prefetch_factor if workers else None,
        )

    def __repr__(self) -> str:
        on_device = ", on_device=True" if self.on_device else ""
        return (
            f"{type(self).__name__}(data_dir={self.data_dir!r}, batch_size={self.batch_size}, "
            f"val_split={self.val_split}, seed={self.seed}{on_device})"
        )
