"""A tiny search space, module and datamodule for tests that need a supernet but not a real one.

``TinySpace``: 8×8 inputs, 3 classes; ``blocks`` LayerChoice blocks (1×1 / 3×3 / 5×5 conv + BN + ReLU)
and one dynamic-width block (DynamicConv2d → DynamicBatchNorm2d → ReLU → DynamicConv2d), so
``3 ** blocks × 3`` archs. Everything is at module level so DDP spawn can pickle it.

Example::

    space = TinySpace()
    space.activate(space.sample(torch.Generator().manual_seed(0)))
    logits = space(torch.randn(2, 3, 8, 8))  # (2, 3)
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import LightningDataModule, LightningModule
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_nas.nn import ChannelChoice, DynamicBatchNorm2d, DynamicConv2d, LayerChoice
from lightning_nas.spaces.base import SearchSpace

__all__ = ["TinyDataModule", "TinyModule", "TinySpace", "synthetic_macs"]

KERNELS = {"conv1x1": 1, "conv3x3": 3, "conv5x5": 5}
WIDTHS = (0.5, 1.0, 1.5)


class Scale(nn.Module):
    """A parameter-free candidate op: ``x * factor`` (``0`` plays the zero op)."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: Tensor) -> Tensor:
        return x * self.factor


def _conv_bn(channels: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(channels, channels, kernel, padding=kernel // 2, bias=False),
                         nn.BatchNorm2d(channels, affine=False), nn.ReLU())


class _WidthBlock(nn.Module):
    def __init__(self, channels: int, name: str) -> None:
        super().__init__()
        width = ChannelChoice(name, WIDTHS, tuple(max(1, round(2 * channels * w)) for w in WIDTHS))
        mid = width.max_channels
        self.body = nn.Sequential(
            DynamicConv2d(channels, mid, 1, out_width=width), DynamicBatchNorm2d(mid, width), nn.ReLU(),
            DynamicConv2d(mid, channels, 1, in_width=width), nn.BatchNorm2d(channels, affine=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


class TinySpace(SearchSpace):
    """``blocks`` op choices and one width choice over ``channels`` channels; 8×8 inputs, 3 classes."""

    def __init__(self, channels: int = 4, blocks: int = 3, num_classes: int = 3, input_size: int = 8) -> None:
        super().__init__()
        self._config = {"channels": channels, "blocks": blocks, "num_classes": num_classes, "input_size": input_size}
        self.input_size, self.num_classes = input_size, num_classes
        self.stem = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(channels, affine=False), nn.ReLU())
        ops = [LayerChoice({k: _conv_bn(channels, v) for k, v in KERNELS.items()}, f"block{i}.op")
               for i in range(blocks)]
        self.features = nn.Sequential(*ops, _WidthBlock(channels, "mix.width"))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))


def synthetic_macs(space: Any, arch: dict[str, Any]) -> float:
    """A stand-in cost (no cost tables): the kernel area of each op plus ten per unit of width."""
    return float(sum(KERNELS[v] ** 2 if k.endswith(".op") else 10 * v for k, v in arch.items()))


class TinyModule(LightningModule):
    """A minimal single-path trainer of a :class:`TinySpace`: one uniformly drawn path per step."""

    def __init__(self, lr: float = 0.05, **space_kwargs: Any) -> None:
        super().__init__()
        self.space = TinySpace(**space_kwargs)
        self.lr = lr

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        # seeded by the step, so every DDP rank trains the same path
        self.space.activate(self.space.sample(torch.Generator().manual_seed(self.global_step)))
        x, y = batch
        return nn.functional.cross_entropy(self.space(x), y)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val/acc", (self.space(x).argmax(-1) == y).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


class TinyDataModule(LightningDataModule):
    """Random 8×8 images whose class shifts the mean, split into train and a held-out val part."""

    def __init__(self, n_train: int = 64, n_val: int = 32, batch_size: int = 16, seed: int = 0) -> None:
        super().__init__()
        self.n_train, self.n_val, self.batch_size, self.seed = n_train, n_val, batch_size, seed

    def _data(self, n: int, offset: int) -> TensorDataset:
        g = torch.Generator().manual_seed(self.seed + offset)
        y = torch.randint(3, (n,), generator=g)
        x = torch.randn(n, 3, 8, 8, generator=g) + (y.float() - 1).view(-1, 1, 1, 1)
        return TensorDataset(x, y)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self._data(self.n_train, 0), batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self._data(self.n_val, 1), batch_size=self.batch_size)
