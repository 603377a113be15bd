"""Train-loader throughput of each datamodule vs the training-step rate of a model on the same batch.

Digits is the real embedded data; CIFAR-10, Tiny ImageNet and ImageNet are fake data sets written in
their real on-disk formats by ``tests/helpers/fake_data.py`` into a temporary folder (a few hundred
images each), so the real readers, decoders and transforms run. For each datamodule and
``num_workers`` in (0, 2): images/s of its ``train_dataloader()`` over whole epochs, after one untimed
epoch (workers started, files in the page cache). Next to it: images/s of one training step
(forward + backward + SGD) of an exported small ShuffleNet arch at the datamodule's input size and the
same batch. ``loader_over_step`` > 1 means the loader keeps up with that model on this machine.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from lightning.pytorch import LightningDataModule

from benchmarks.common import Bench, spread
from benchmarks.supernet_overhead import train_step
from lightning_nas.datamodules import CIFAR10DataModule, DigitsDataModule, ImageNetDataModule, TinyImageNetDataModule
from lightning_nas.spaces import ShuffleNetSpace
from tests.helpers.fake_data import write_fake_cifar10, write_fake_imagenet, write_fake_tinyimagenet

BATCH = 64


def datamodules(root: Path, quick: bool) -> dict[str, Callable[[int], LightningDataModule]]:
    """``{name: build(num_workers)}``, writing the fake data sets first."""
    n = 256 if quick else 640
    cifar = write_fake_cifar10(root / "cifar", n_train=n, n_test=10)
    tiny = write_fake_tinyimagenet(root / "tiny", n_classes=8, per_class=n // 8, val_per_class=1)
    imagenet = write_fake_imagenet(root / "imagenet", n_classes=4, per_class=n // 4, val_per_class=1,
                                   size=(300, 400))
    common = {"batch_size": BATCH, "val_split": 0.1}
    return {
        "digits": lambda w: DigitsDataModule(num_workers=w, **common),
        "cifar10_fake": lambda w: CIFAR10DataModule(str(cifar), num_workers=w, **common),
        "tinyimagenet_fake": lambda w: TinyImageNetDataModule(str(tiny), num_workers=w, **common),
        "imagenet_fake": lambda w: ImageNetDataModule(str(imagenet), num_workers=w, **common),
    }


def loader_rate(dm: LightningDataModule, epochs: int) -> tuple[float, int]:
    """Images per second of the train loader over ``epochs`` epochs after a warm-up epoch, and its input size."""
    dm.setup("fit")
    loader = dm.train_dataloader()
    size = 0
    for x, _ in loader:  # warm-up: workers start, files get cached
        size = x.shape[-1]
    rates = []
    for _ in range(epochs):
        images, start = 0, time.perf_counter()
        for x, _ in loader:
            images += x.shape[0]
        rates.append(images / (time.perf_counter() - start))
    return spread(rates)["median"], size


def step_rate(size: int, steps: int) -> float:
    """Images per second of a training step of an exported small ShuffleNet at ``size`` px."""
    space = ShuffleNetSpace(10, size, width_mult=0.25, head_channels=256)
    net = space.export(space.sample(torch.Generator().manual_seed(0))).train()
    x, y = torch.randn(BATCH, 3, size, size), torch.randint(0, 10, (BATCH,))
    step = train_step(net, x, y)
    step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return BATCH / spread(times)["median"]


def main(argv: list[str] | None = None) -> None:
    bench = Bench("data_throughput", "Train-loader images/s of each datamodule (num_workers 0 and 2) vs the "
                  "images/s of a training step of a small model at the same batch and input size.")
    args = bench.parse(argv)
    epochs, steps = (2, 2) if args.quick else (4, 4)
    bench.settings.update({"batch": BATCH, "epochs_timed": epochs, "steps_timed": steps,
                           "model": "ShuffleNetSpace(width_mult=0.25, head_channels=256) exported arch, SGD"})
    rates: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        builders = datamodules(Path(tmp), args.quick)
        bench.settings["fake_images_per_set"] = 256 if args.quick else 640
        for name, build in builders.items():
            for workers in (0, 2):
                rate, size = loader_rate(build(workers), epochs)
                bench.figure(f"{name}.workers{workers}.images_per_s", rate)
            if size not in rates:
                rates[size] = step_rate(size, steps)
            bench.figure(f"{name}.step_images_per_s_{size}px", rates[size])
            best = max(bench.figures[f"{name}.workers{w}.images_per_s"] for w in (0, 2))
            bench.figure(f"{name}.loader_over_step", best / rates[size])
    bench.note("Loader and step are timed separately, each with the machine to itself (two cores shared with "
               "other users); in training both share the cores, so a ratio near 1 already means a stall.")
    bench.emit()


if __name__ == "__main__":
    main()
