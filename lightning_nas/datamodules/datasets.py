"""The pieces a datamodule is made of: the held-out split, the per-sample transformed view of a data set, image
reading, worker counts and the data-root error (:mod:`lightning_nas.datamodules.base` assembles them)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_jpeg, read_file
from torchvision.transforms import v2

from lightning_nas.errors import ConfigError, MissingFileError
from lightning_nas.seeding import mix_seed

Transform = Callable[[Any], Any]


class DataRootError(MissingFileError):
    """A data root does not hold the files a datamodule expects.

    The message names the folder, the files looked for and how to get them.
    """


def default_num_workers(cap: int = 4) -> int:
    """Return a loader worker count that suits this machine: ``min(cap, os.cpu_count())``.

    Args:
        cap: The most workers to use.
    """
    return max(0, min(cap, os.cpu_count() or 1))


def split_indices(n: int, val_split: float, seed: int) -> tuple[list[int], list[int]]:
    """Split ``range(n)`` into a training part and a held-out part, deterministically.

    The permutation comes from a CPU generator seeded with ``seed`` only, so every process
    (every DDP rank, every later run) gets the same indices for the same ``n`` and ``seed``.

    Args:
        n: Number of samples in the training set.
        val_split: Fraction held out, in (0, 1). At least one sample lands on each side.
        seed: Seed of the split.

    Returns:
        ``(train_indices, val_indices)``, each sorted, disjoint, together ``range(n)``.

    Raises:
        ValueError: If ``n < 2`` (nothing to split) or ``val_split`` is not in (0, 1).
    """
    check_val_split(val_split)
    if n < 2:
        raise ValueError(f"Cannot hold out a validation part of a training set of {n} sample(s); need at least 2.")
    n_val = min(max(round(n * val_split), 1), n - 1)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(perm[n_val:]), sorted(perm[:n_val])


def check_val_split(val_split: float) -> None:
    """Raise a ``ValueError`` naming ``val_split`` and the fix unless it lies in (0, 1)."""
    if not 0.0 < float(val_split) < 1.0:
        raise ConfigError(
            f"val_split={val_split!r} must lie strictly between 0 and 1: it is the fraction of the training set "
            "held out for the search's validation split. Use e.g. `val_split: 0.1` (CLI: --data.val_split 0.1)."
        )


def read_image_rgb(path: str) -> Tensor:
    """Decode an image file to a ``uint8`` RGB tensor of shape ``(3, H, W)``.

    JPEG files are decoded by ``torchvision.io.decode_jpeg`` straight from the file's bytes
    (no PIL round trip); other formats, and JPEGs libjpeg declines, go through PIL.

    Args:
        path: The image file.
    """
    data = read_file(path)
    if data.numel() > 2 and data[0] == 0xFF and data[1] == 0xD8:
        try:
            return decode_jpeg(data, mode=ImageReadMode.RGB)
        except RuntimeError:
            pass  # e.g. an unusual colour space: PIL below copes
    with Image.open(path) as img:
        return v2.functional.pil_to_tensor(img.convert("RGB"))


class TransformedSubset(Dataset):
    """The samples ``indices`` of ``dataset`` with ``transform`` applied to each image.

    Lets the training part (train transforms) and the held-out part (eval transforms) share
    one underlying data set, so the files are read or held in memory once.

    Args:
        dataset: An untransformed data set of ``(image, label)`` pairs.
        indices: Which samples of ``dataset`` to expose, in order.
        transform: Applied to each image.
        aug_seed: When given, each sample's random augmentation is drawn from a generator
            seeded by ``(aug_seed, index)``, so the same index always yields the same tensor;
            the global RNG is left as it was. A key ``(i, seed)`` (from
            :class:`~lightning_nas.datamodules.resumable.EpochSampler`) seeds sample ``i`` with ``seed``.
    """

    def __init__(
        self,
        dataset: Dataset,
        indices: Sequence[int],
        transform: Transform | None = None,
        aug_seed: int | None = None,
    ) -> None:
        self.dataset = dataset
        self.indices = list(indices)
        self.transform = transform
        self.aug_seed = aug_seed

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Any, int]:
        # an (i, seed) key comes from EpochSampler: the augmentation seed of sample i in this epoch
        i, seed = key if isinstance(key, tuple) else (key, None)
        index = self.indices[i]
        image, label = self.dataset[index]
        if self.transform is None:
            return image, int(label)
        if seed is None and self.aug_seed is not None:
            seed = mix_seed(self.aug_seed, index)
        if seed is None:
            return self.transform(image), int(label)
        # The default CPU generator is what the transforms draw from; seeding it directly is far
        # cheaper per sample than torch.manual_seed / fork_rng, which also touch accelerators.
        generator = torch.default_generator
        state = generator.get_state()
        generator.manual_seed(seed)
        try:
            return self.transform(image), int(label)
        finally:
            generator.set_state(state)


class ToImageSize:
    """A ``uint8`` ``(C, H, W)`` tensor of ``size`` × ``size`` from a PIL image, array or tensor (resize the short
    side, centre-crop, as the eval transforms do; a no-op for images of that size already)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, image: Any) -> Tensor:
        image = v2.functional.to_image(image).as_subclass(Tensor)
        if tuple(image.shape[-2:]) != (self.size, self.size):
            image = v2.functional.center_crop(v2.functional.resize(image, self.size, antialias=True), self.size)
        return image.to(torch.uint8).contiguous()
