"""A training set held on the training device as one ``uint8`` tensor, augmented there a batch at a time.

The approach of the fastest CIFAR-10 training scripts: the whole training part (CIFAR-10: 45,000 × 3 × 32 × 32
bytes = 138 MB) is copied to the GPU once; each batch is one gather of its rows with every sample's crop offset
and flip folded into the gather's indices, then one multiply-add that converts to float and normalises. No
worker processes, no per-sample Python transforms, no host-to-device copy of images per step.

What the CPU loaders guarantee holds here too, because the same :class:`~lightning_nas.datamodules.resumable.
EpochSampler` and :class:`~lightning_nas.datamodules.resumable.ResumableDataLoader` drive it: the order is a
function of ``(seed, epoch)`` and each DDP rank reads its own disjoint share; each sample's augmentation is a
function of ``(seed, epoch, index)`` (the sampler's per-sample seed, hashed here into crop offsets and a flip), so a
resumed epoch serves the same batches, on any number of ranks. The augmentation draws nothing from the torch RNG.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from lightning_nas.seeding import mix_seed

__all__ = ["BatchAugment", "DeviceImages", "PadCropFlip", "RandomResizedCropFlip", "as_batch", "uniforms"]

_M64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    """One step of SplitMix64's output function: a well-mixed 64-bit integer from ``x``."""
    z = (x + 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def uniforms(seed: int, count: int) -> list[float]:
    """``count`` numbers in [0, 1) that are a function of ``seed`` only (no RNG state is read or changed).

    The sampler's per-sample seeds of consecutive indices are close integers; SplitMix64 decorrelates them.
    """
    out, state = [], int(seed)
    for _ in range(count):
        state = (state + 0x9E3779B97F4A7C15) & _M64
        out.append((_splitmix64(state) >> 11) * (1.0 / (1 << 53)))
    return out


class BatchAugment(Protocol):
    """Turns a ``uint8`` batch ``(B, C, H, W)`` and one seed per sample into the normalised float batch."""

    def __call__(self, images: Tensor, seeds: Sequence[int]) -> Tensor: ...


def _scale_shift(mean: Sequence[float], std: Sequence[float], device: torch.device) -> tuple[Tensor, Tensor]:
    """``x_uint8 * scale + shift == (x / 255 - mean) / std`` per channel."""
    m, s = torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)
    return (1.0 / (255.0 * s)).view(1, -1, 1, 1).to(device), (-m / s).view(1, -1, 1, 1).to(device)


class PadCropFlip:
    """``RandomCrop(size, padding)`` (zero fill), ``RandomHorizontalFlip``, ``ToDtype(scale=True)``, ``Normalize``.

    The same operations as the CPU pipeline of the CIFAR datamodules, on a whole batch in one gather: sample ``b``'s
    output pixel ``(r, c)`` reads padded pixel ``(dy_b + r, dx_b + c)`` (``dx_b + size - 1 - c`` when flipped).
    Offsets and flips come from each sample's seed (:func:`uniforms`).

    Args:
        size: output side (the images are ``size`` × ``size``).
        padding: zero padding on each side before the crop.
        mean: per-channel mean of the normalisation.
        std: per-channel standard deviation of the normalisation.
        flip: flip half the samples horizontally.
    """

    def __init__(self, size: int, padding: int, mean: Sequence[float], std: Sequence[float], flip: bool = True
                 ) -> None:
        self.size, self.padding, self.flip = int(size), int(padding), bool(flip)
        self.mean, self.std = tuple(mean), tuple(std)
        self._norm: dict[torch.device, tuple[Tensor, Tensor]] = {}

    def params(self, seeds: Sequence[int]) -> Tensor:
        """``(B, 3)`` int64: each sample's ``(dy, dx, flipped)``, from one SplitMix64 hash of its seed (the high
        32 bits scaled to ``dy``, the low 32 bits to ``dx``, the lowest bit the flip: about 4 µs per sample)."""
        span, flip, rows = 2 * self.padding + 1, int(self.flip), []
        for seed in seeds:
            z = _splitmix64((int(seed) + 0x9E3779B97F4A7C15) & _M64)
            rows.append(((z >> 32) * span >> 32, (z & 0xFFFFFFFF) * span >> 32, z & flip))
        return torch.tensor(rows, dtype=torch.int64).view(-1, 3)

    def apply(self, images: Tensor, params: Tensor) -> Tensor:
        """Crop and flip ``images`` (``uint8 (B, C, H, W)``) by ``params`` (:meth:`params`), then normalise."""
        b, c = images.shape[:2]
        device, size, p = images.device, self.size, self.padding
        params = params.to(device)
        dy, dx, flipped = params[:, 0:1], params[:, 1:2], params[:, 2:3].bool()
        ar = torch.arange(size, device=device)
        rows = dy + ar  # (B, size)
        cols = torch.where(flipped, dx + (size - 1) - ar, dx + ar)
        padded = F.pad(images, (p, p, p, p)) if p else images
        out = padded[torch.arange(b, device=device).view(b, 1, 1, 1), torch.arange(c, device=device).view(1, c, 1, 1),
                     rows.view(b, 1, size, 1), cols.view(b, 1, 1, size)]
        return self.normalize(out)

    def normalize(self, images: Tensor) -> Tensor:
        """To float32 (``uint8`` values, or floats on the same 0–255 scale), scaled to [0, 1] and normalised, in one
        multiply-add."""
        if images.device not in self._norm:
            self._norm[images.device] = _scale_shift(self.mean, self.std, images.device)
        scale, shift = self._norm[images.device]
        return torch.addcmul(shift, images.float(), scale)

    def __call__(self, images: Tensor, seeds: Sequence[int]) -> Tensor:
        return self.apply(images, self.params(seeds))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, padding={self.padding}, flip={self.flip})"


class RandomResizedCropFlip(PadCropFlip):
    """``RandomResizedCrop(size, scale, ratio)`` (bilinear), ``RandomHorizontalFlip``, then normalise, per batch.

    Each sample's crop box is drawn as torchvision draws it (area fraction uniform in ``scale``, log aspect ratio
    uniform in ``log(ratio)``, position uniform), from its seed; a box that does not fit is clamped to the image
    (torchvision retries up to 10 times, then falls back to a centre crop). The crops are resampled to ``size`` by
    one ``grid_sample`` over the batch (bilinear, half-pixel centres: the same sampling points as
    ``resized_crop``; crops are never larger than the image, so no antialiasing is lost).

    Args:
        size: output side.
        scale: range of the crop's area as a fraction of the image's.
        ratio: range of the crop's aspect ratio (width / height).
        mean: per-channel mean of the normalisation.
        std: per-channel standard deviation of the normalisation.
        flip: flip half the samples horizontally.
        image_size: side of the (square) source images (default ``size``).
    """

    def __init__(self, size: int, scale: tuple[float, float], mean: Sequence[float], std: Sequence[float],
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), flip: bool = True, image_size: int | None = None
                 ) -> None:
        super().__init__(size, 0, mean, std, flip)
        self.scale, self.ratio = (float(scale[0]), float(scale[1])), (float(ratio[0]), float(ratio[1]))
        self.image_size = int(image_size or size)

    def boxes(self, seeds: Sequence[int], height: int, width: int) -> Tensor:
        """``(B, 5)`` float64: each sample's crop ``(top, left, h, w, flipped)`` in pixels."""
        lo, hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        rows = []
        for seed in seeds:
            u = uniforms(seed, 5)
            area = height * width * (self.scale[0] + u[0] * (self.scale[1] - self.scale[0]))
            aspect = math.exp(lo + u[1] * (hi - lo))
            w = min(max(round(math.sqrt(area * aspect)), 1), width)
            h = min(max(round(math.sqrt(area / aspect)), 1), height)
            top, left = min(int(u[2] * (height - h + 1)), height - h), min(int(u[3] * (width - w + 1)), width - w)
            rows.append((top, left, h, w, float(self.flip and u[4] < 0.5)))
        return torch.tensor(rows, dtype=torch.float64).view(-1, 5)

    def params(self, seeds: Sequence[int]) -> Tensor:
        """``(B, 10)`` float32: each sample's affine map (``affine_grid``'s ``theta``, 6 numbers) and the
        normalised coordinates of its box's outer pixel centres (``x_lo, x_hi, y_lo, y_hi``)."""
        return self.theta(self.boxes(seeds, self.image_size, self.image_size), self.image_size, self.image_size)

    @staticmethod
    def theta(boxes: Tensor, height: int, width: int) -> Tensor:
        """Affine maps (``align_corners=False``) that sample the boxes ``(top, left, h, w, flipped)``, and the
        bounds that keep each box's samples inside it (as resizing the cropped image clamps at its edges)."""
        top, left, h, w, flipped = boxes.unbind(1)
        out = torch.zeros(len(boxes), 10, dtype=torch.float64)
        out[:, 0] = (1.0 - 2.0 * flipped) * w / width
        out[:, 2] = (2 * left + w) / width - 1
        out[:, 4] = h / height
        out[:, 5] = (2 * top + h) / height - 1
        out[:, 6] = (2 * left + 1) / width - 1
        out[:, 7] = (2 * (left + w) - 1) / width - 1
        out[:, 8] = (2 * top + 1) / height - 1
        out[:, 9] = (2 * (top + h) - 1) / height - 1
        return out.float()

    def apply(self, images: Tensor, params: Tensor) -> Tensor:
        b, c = images.shape[:2]
        params = params.to(images.device)
        grid = F.affine_grid(params[:, :6].view(b, 2, 3), [b, c, self.size, self.size], align_corners=False)
        bounds = params[:, 6:].view(b, 1, 1, 4)
        grid = torch.stack((grid[..., 0].clamp(bounds[..., 0], bounds[..., 1]),
                            grid[..., 1].clamp(bounds[..., 2], bounds[..., 3])), dim=-1)
        return self.normalize(F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border",
                                            align_corners=False))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, scale={self.scale}, ratio={self.ratio}, flip={self.flip})"


def as_batch(batch: Any) -> Any:
    """The loader's ``collate_fn``: :meth:`DeviceImages.__getitems__` already returns the batch."""
    return batch


class DeviceImages(Dataset):
    """Images held as one ``uint8`` tensor (on any device), served in augmented batches.

    A ``DataLoader`` with automatic batching calls :meth:`__getitems__` with the batch's keys (with
    :class:`~lightning_nas.datamodules.resumable.EpochSampler`: ``(index, augmentation seed)`` pairs) and gets
    the ``(images, labels)`` batch on the images' device; use ``collate_fn=as_batch`` and ``num_workers=0``.

    Args:
        images: ``uint8 (N, C, H, W)``.
        labels: ``int64 (N,)`` on the same device.
        augment: the batch augmentation (:class:`PadCropFlip`, :class:`RandomResizedCropFlip`).
        seed: seeds the augmentation of plain integer keys (``mix_seed(seed, index)``).
    """

    def __init__(self, images: Tensor, labels: Tensor, augment: BatchAugment, seed: int = 0) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"DeviceImages needs uint8 images (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels.")
        self.images, self.labels = images, labels.to(images.device, torch.int64)
        self.augment, self.seed = augment, seed

    @property
    def device(self) -> torch.device:
        return self.images.device

    def __len__(self) -> int:
        return len(self.images)

    def __getitems__(self, keys: Sequence[int | tuple[int, int]]) -> tuple[Tensor, Tensor]:
        index, seeds = [], []
        for key in keys:
            i, seed = key if isinstance(key, tuple) else (key, mix_seed(self.seed, key))
            index.append(i)
            seeds.append(seed)
        rows = torch.tensor(index, dtype=torch.int64).to(self.device, non_blocking=True)
        return self.augment(self.images.index_select(0, rows), seeds), self.labels.index_select(0, rows)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Tensor, int]:
        images, labels = self.__getitems__([key])
        return images[0], int(labels[0])
