"""Search quality, shared by every ``benchmarks/quality_<method>.py``: the regime, its data, stand-alone
training of a found network, and the paired statistics of search vs random.

**The regime** (:class:`Regime`). On the embedded digits data the default settings of the other benchmarks
saturate: every small network reaches 98–100 %, so no ranking can show. The quality benchmarks make the
task harder, on purpose and the same way for every method, so that architectures differ:

- the 8×8 digits are upsampled to ``input_size`` (16 px instead of 32: the originals hold 8×8 pixels, so
  nothing is lost, and a step costs a quarter);
- the search sees ``train_images`` training images (a seeded subset of the 1,437 outside the fixed test
  split) and a held-out ``val_images`` validation split (disjoint, from the same 1,437) on which the
  searches score candidates;
- Gaussian pixel noise of standard deviation ``noise_std`` (in normalised units, drawn once per image
  from ``split_seed``: the data are fixed, not re-noised each epoch) may be added to every split;
- a stand-alone network trains ``epochs`` epochs (SGD Nesterov, cosine to zero, batch ``batch_size``,
  no augmentation) from a fresh initialisation, and is scored on the fixed **test split** (1,197 images, below),
  which never chooses anything: searches score on the validation split only;
- one stand-alone measurement of an architecture is the mean over ``repeats`` such trainings with different
  seeds (:func:`standalone_runs`): with a few hundred training images one run's seed-to-seed noise is
  a couple of points, as large as the differences between architectures; averaging divides it by √repeats.

**Why these settings** (probes of 12 random archs of ``quality_spos``'s space, 3 training seeds each; σ: the
single-run seed-to-seed standard deviation, τ: the spread across archs of their means, in points). Without
noise every small network reaches 92–95 %: spread 0.76 against a measurement noise of 0.88 (24 archs, 3 seeds),
no ranking can show. Pixel noise makes capacity matter — σ = 1.0 with 200 training images: τ 3.7, σ 2.7;
400 images: τ 1.2, σ 1.0; σ = 1.5: τ 5.0, σ 4.7; 40 stand-alone epochs instead of 20: τ 3.5, σ 2.7; batch 64
at lr 0.1: τ 2.4, σ 2.3; lr 0.02 with weight decay 5e-3: τ 6.3, σ 5.7; scoring on 1,197 test images instead of
360: τ 3.2, σ 2.3 — the arch spread stays about one single run's noise whatever the difficulty, the training
recipe or the test size: in this space most archs are as good as each other, and a few bad ones (narrow
channels) make the spread. The lever left is the number of seeds one measurement averages (noise σ/√repeats):
``repeats = 16``; ``quality_spos`` measures the resulting ratio over 24 archs (8 seeds gave 2.6×: spread 2.45
points against a noise of 0.94, single run 2.66). Sixteen trainings per measurement fit a benchmark's 30 minutes
on 2 cores because they run in two worker processes of one thread each (:func:`set_workers`, ``--workers``):
a stand-alone training is about 3 s of one core and independent of the others. The test split is the
official 360 images plus the 837 training-set images that neither train nor val holds (never seen by any training
or search), which trims the single-run noise by about a sixth.

``benchmarks.quality_spos`` measures that the regime separates architectures: the spread of stand-alone
accuracy across random archs (``arch_spread_points``: standard deviation across archs, one seed each)
against the seed-to-seed noise of one arch (``seed_noise_points``: standard deviation across training
seeds of the same arch, pooled over a few archs); the goal is a ratio of at least 3.

**The statistics** (:func:`paired_stats`). Search and random get the same budget and the same seed
``s`` (supernet, candidates, stand-alone training), so the comparison is paired over seeds:
``d_s = 100 · (search_acc_s − random_acc_s)`` in accuracy points.

- ``search_minus_random_points``: the median of ``d`` over seeds;
- ``ci95``: the two-sided 95 % Student-t interval of the *mean* of ``d`` (``mean ± t_{0.975, n−1} · sd/√n``);
- ``p_value``: the one-sided paired t-test of ``mean(d) > 0`` (``scipy.stats.ttest_rel(...,
  alternative="greater")``). With 3 seeds a Wilcoxon signed-rank test cannot go below 1/8, so the t-test
  is the only paired test that can reach p < 0.05 at this seed count; its normality assumption is the
  price, and ``wins`` (seeds where search beats random) is given next to it.

``--data cifar10 --data-dir DIR`` (:func:`add_data_arguments`) runs the same benchmark on CIFAR-10 for a
user who has it (32 px, no upsampling, no added noise by default); the figures on this page are digits.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import os
import statistics
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningDataModule
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

__all__ = [
    "QualityData",
    "Regime",
    "Splits",
    "accuracy_on",
    "add_data_arguments",
    "load_splits",
    "paired_stats",
    "quality_figures",
    "regime_from_args",
    "spread_and_noise",
    "standalone_accuracy",
    "standalone_runs",
    "train_standalone",
    "train_and_score",
    "set_workers",
    "close_workers",
]


@dataclass(frozen=True)
class Regime:
    """Where the quality benchmarks compare archs (see the module docstring); every field is recorded."""

    data: str = "digits"
    data_dir: str = "."
    input_size: int = 16
    train_images: int = 200
    val_images: int = 400
    noise_std: float = 1.0
    epochs: int = 20
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    split_seed: int = 42
    repeats: int = 16
    test_from_pool: bool = True

    def smoke(self, repeats: int = 1, images: int = 64) -> Regime:
        """The same regime shrunk for ``--quick``: 2 stand-alone epochs, ``images`` train and val images."""
        return dataclasses.replace(self, epochs=2, repeats=repeats, train_images=images, val_images=images)

    def describe(self) -> str:
        """One line for the page's table."""
        noise = f", noise σ {self.noise_std:g}" if self.noise_std else ""
        test = "; test: official + unused training images" if self.test_from_pool else ""
        return (f"{self.data} {self.input_size} px, {self.train_images} train / {self.val_images} val images"
                f"{noise}{test}; stand-alone {self.epochs} epochs, mean of {self.repeats} seed(s)")

    def settings(self) -> dict[str, Any]:
        return {"regime": self.describe(), "regime_settings": asdict(self)}


@dataclass
class Splits:
    """The regime's data as normalised tensors: train (search and stand-alone training), val (the searches'
    scores), test (reported only)."""

    train: tuple[Tensor, Tensor]
    val: tuple[Tensor, Tensor]
    test: tuple[Tensor, Tensor]
    num_classes: int
    input_size: int


def _digits(regime: Regime) -> tuple[Tensor, Tensor, Tensor, Tensor, tuple[float, float]]:
    from lightning_nas.datamodules.digits import DigitsDataModule, digits_test_indices, load_digits_tensors

    images, labels = load_digits_tensors(regime.input_size)
    train, test = digits_test_indices(labels)
    mean, std = DigitsDataModule.mean[0], DigitsDataModule.std[0]
    return images[train], labels[train], images[test], labels[test], (mean, std)


def _cifar10(regime: Regime) -> tuple[Tensor, Tensor, Tensor, Tensor, tuple[Any, Any]]:
    from lightning_nas.datamodules import CIFAR10DataModule

    dm = CIFAR10DataModule(regime.data_dir)
    dm.check_data_root()  # one line naming the files and how to get them

    def tensors(ds: Any) -> tuple[Tensor, Tensor]:
        x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).float().div_(255)
        return x, torch.tensor(ds.targets)

    x_train, y_train = tensors(dm.make_train_dataset())
    x_test, y_test = tensors(dm.make_test_dataset())
    if regime.input_size != 32:
        x_train, x_test = (F.interpolate(x, size=regime.input_size, mode="bilinear", antialias=True)
                           for x in (x_train, x_test))
    return x_train, y_train, x_test, y_test, (torch.tensor(dm.mean).view(3, 1, 1), torch.tensor(dm.std).view(3, 1, 1))


def load_splits(regime: Regime) -> Splits:
    """The regime's train/val/test tensors (normalised, noise added where asked), always the same for a regime.

    Train and val are disjoint seeded subsets (``split_seed``) of the official training set; test is the
    official test split, whole, followed (``test_from_pool``) by the rest of the training set that neither train
    nor val holds: images no training or search ever sees, so they are test images as much as the official ones.
    """
    if regime.data not in ("digits", "cifar10"):
        raise ValueError(f"--data must be digits or cifar10, got {regime.data!r}")
    x_pool, y_pool, x_test, y_test, (mean, std) = _digits(regime) if regime.data == "digits" else _cifar10(regime)
    if regime.train_images + regime.val_images > len(y_pool):
        raise ValueError(f"train_images + val_images = {regime.train_images + regime.val_images} exceeds the "
                         f"{len(y_pool)} training images of {regime.data}")
    gen = torch.Generator().manual_seed(regime.split_seed)
    order = torch.randperm(len(y_pool), generator=gen)
    val_idx, train_idx = order[: regime.val_images], order[regime.val_images:][: regime.train_images]

    def prepare(x: Tensor) -> Tensor:
        x = (x - mean) / std
        if regime.noise_std > 0:
            x = x + regime.noise_std * torch.randn(x.shape, generator=gen)
        return x.contiguous()

    train, val = (prepare(x_pool[train_idx]), y_pool[train_idx]), (prepare(x_pool[val_idx]), y_pool[val_idx])
    test = (prepare(x_test), y_test)
    if regime.test_from_pool:
        rest = order[regime.val_images + regime.train_images:]
        test = (torch.cat([test[0], prepare(x_pool[rest])]), torch.cat([test[1], y_pool[rest]]))
    return Splits(train=train, val=val, test=test,
                  num_classes=int(y_pool.max()) + 1, input_size=x_pool.shape[-1])


def _batches(x: Tensor, y: Tensor, batch_size: int, generator: torch.Generator | None = None
             ) -> Iterator[tuple[Tensor, Tensor]]:
    order = torch.randperm(len(y), generator=generator) if generator is not None else torch.arange(len(y))
    for i in range(0, len(y), batch_size):
        idx = order[i : i + batch_size]
        yield x[idx], y[idx]


def accuracy_on(net: nn.Module, data: tuple[Tensor, Tensor], batch_size: int = 500) -> float:
    """Top-1 of ``net`` in eval mode on ``(images, labels)`` (the module's mode is restored)."""
    was_training = net.training
    net.eval()
    correct = 0
    with torch.no_grad():
        for x, y in _batches(*data, batch_size):
            correct += int((net(x).argmax(1) == y).sum())
    net.train(was_training)
    return correct / max(1, len(data[1]))


def train_standalone(net: nn.Module, splits: Splits, regime: Regime, seed: int, reinit: bool = True) -> nn.Module:
    """Train ``net`` on the regime's training split for its fixed budget; deterministic in ``seed``.

    Args:
        net: a plain network (``space.export(arch)``, a NAS-RL child, ...).
        splits: the regime's data.
        regime: the budget: epochs, batch size, SGD Nesterov with cosine decay to zero, weight decay on
            weights only (not BatchNorm or biases).
        seed: seeds the re-initialisation and the batch order.
        reinit: re-initialise every layer first (training from scratch); ``False`` fine-tunes as given.

    Returns:
        ``net``, trained, in eval mode.
    """
    from lightning_nas.modules.classification import reset_parameters

    torch.manual_seed(seed)
    if reinit:
        reset_parameters(net)
    net.train()
    decay = [p for p in net.parameters() if p.ndim > 1]
    rest = [p for p in net.parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": regime.weight_decay}, {"params": rest, "weight_decay": 0}],
                          lr=regime.lr, momentum=regime.momentum, nesterov=True)
    steps = regime.epochs * math.ceil(len(splits.train[1]) / regime.batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    gen = torch.Generator().manual_seed(seed)
    for _ in range(regime.epochs):
        for x, y in _batches(*splits.train, regime.batch_size, gen):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(net(x), y).backward()
            opt.step()
            schedule.step()
    return net.eval()


def standalone_accuracy(net: nn.Module, splits: Splits, regime: Regime, seed: int, split: str = "test",
                        reinit: bool = True) -> float:
    """Train ``net`` (:func:`train_standalone`: from scratch, or as given when not ``reinit``) and return its
    top-1 on ``split`` ("test" or "val")."""
    train_standalone(net, splits, regime, seed, reinit=reinit)
    return accuracy_on(net, getattr(splits, split))


def standalone_runs(build: Callable[[], nn.Module], splits: Splits, regime: Regime, seed: int,
                    split: str = "test") -> list[float]:
    """The regime's stand-alone measurement of one network: ``regime.repeats`` fresh copies from ``build()``,
    trained with seeds ``seed · 1000 + k``; their accuracies on ``split`` (report their mean). The copies train
    in the worker processes of :func:`set_workers` (the same figures as one by one)."""
    with torch.random.fork_rng(devices=[]):  # build() draws initial weights: leave the caller's stream alone
        nets = [build() for _ in range(regime.repeats)]
    return train_and_score([(net, seed * 1000 + k, True) for k, net in enumerate(nets)], splits, regime, split)


# ---- the stand-alone trainings in parallel: each is one thread for seconds, independent of the others ----

_workers = 1
_pool: Any = None
_pool_splits: Splits | None = None
_worker_splits: Splits | None = None


def set_workers(n: int) -> None:
    """Run :func:`train_and_score`'s trainings in ``n`` processes (``1``: in this process); each worker uses as
    many threads as this process (``torch.get_num_threads()``), so ``n`` × threads cores in all."""
    global _workers
    if n < 1:
        raise ValueError(f"--workers must be at least 1, got {n}")
    close_workers()
    _workers = n


def close_workers() -> None:
    """Stop the worker processes (the benchmark harness calls it before a benchmark's process exits)."""
    global _pool, _pool_splits
    if _pool is not None:
        _pool.shutdown(wait=True, cancel_futures=True)
    _pool, _pool_splits = None, None


def _init_worker(splits: Splits, threads: int) -> None:
    global _worker_splits
    torch.set_num_threads(threads)
    _worker_splits = splits


def _train_and_score_one(job: tuple[nn.Module, int, bool, Regime, str]) -> float:
    net, seed, reinit, regime, split = job
    assert _worker_splits is not None
    return standalone_accuracy(net, _worker_splits, regime, seed, split, reinit)


def train_and_score(jobs: Sequence[tuple[nn.Module, int, bool]], splits: Splits, regime: Regime,
                    split: str = "test") -> list[float]:
    """Train each ``(net, seed, reinit)`` with :func:`train_standalone` and score it on ``split``, in order.

    With :func:`set_workers` above 1 the jobs run in that many spawned processes (started once per ``splits``,
    which they receive once). A training depends only on its net, seed and regime, so the accuracies are the same
    as in this process with the same thread count (tested with seeded nets; once, for an unseeded quantized net at
    chance, the two differed by one test image: a quantizer's rounding moved by a last-bit difference). The nets
    given are not modified (each job trains a copy), nor is this process's global random stream.
    """
    global _pool, _pool_splits
    if _workers <= 1 or len(jobs) <= 1:
        with torch.random.fork_rng(devices=[]):  # train_standalone seeds the global stream; as in a worker, not ours
            return [standalone_accuracy(copy.deepcopy(net), splits, regime, seed, split, reinit)
                    for net, seed, reinit in jobs]
    if _pool is None or _pool_splits is not splits:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        close_workers()
        _pool = ProcessPoolExecutor(_workers, mp_context=multiprocessing.get_context("spawn"),
                                    initializer=_init_worker, initargs=(splits, torch.get_num_threads()))
        _pool_splits = splits
    return list(_pool.map(_train_and_score_one, [(net, seed, reinit, regime, split) for net, seed, reinit in jobs]))


class QualityData(LightningDataModule):
    """The regime's splits as a ``LightningDataModule``, for the method modules that train with a ``Trainer``
    (SPOS, ProxylessNAS): shuffled training batches, the validation split (arch steps, scoring), the test
    split, and a fixed ``calibration_dataloader`` for BatchNorm re-calibration (as ``VisionDataModule``'s)."""

    def __init__(self, splits: Splits, batch_size: int, seed: int = 0) -> None:
        super().__init__()
        self.splits, self.batch_size, self.seed = splits, batch_size, seed
        self.num_classes, self.input_size = splits.num_classes, splits.input_size

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(*self.splits.train), batch_size=self.batch_size, shuffle=True,
                          generator=torch.Generator().manual_seed(self.seed))

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(*self.splits.val), batch_size=self.batch_size)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(*self.splits.test), batch_size=self.batch_size)

    def calibration_dataloader(self, batch_size: int | None = None, num_batches: int | None = None) -> DataLoader:
        x, y = self.splits.train
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(self.seed + 1))
        bs = batch_size or self.batch_size
        if num_batches is not None:
            order = order[: num_batches * bs]
        return DataLoader(TensorDataset(x[order], y[order]), batch_size=bs)


def _t_interval(d: Sequence[float]) -> tuple[float, float]:
    from scipy.stats import t

    n = len(d)
    if n < 2:
        return (float("nan"), float("nan"))
    mean, sd = statistics.fmean(d), statistics.stdev(d)
    half = float(t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return (mean - half, mean + half)


def _one_sided_p(d: Sequence[float]) -> float:
    from scipy.stats import ttest_1samp

    if len(d) < 2:
        return float("nan")
    if statistics.pstdev(d) < 1e-9:  # no spread (up to rounding): the t statistic is ±inf (or 0/0 when every d is 0)
        mean = statistics.fmean(d)
        return 0.0 if mean > 0 else 1.0 if mean < 0 else 0.5
    # the paired test on differences (ttest_rel(search, random) is this test on search - random)
    return float(ttest_1samp(d, 0.0, alternative="greater").pvalue)


def paired_stats(search_acc: Sequence[float], random_acc: Sequence[float]) -> dict[str, Any]:
    """Search vs random, paired over seeds (accuracies as fractions; differences in points).

    Returns:
        ``search_minus_random_points`` (median of the per-seed differences), ``mean_points``, ``ci95`` (the
        95 % t interval of the mean difference), ``p_value`` (one-sided paired t-test, ``mean > 0``),
        ``wins`` (seeds where search is better) and ``differences_points``.

    Raises:
        ValueError: when the two lists differ in length or are empty.
    """
    if len(search_acc) != len(random_acc) or not search_acc:
        raise ValueError(f"paired_stats needs one search and one random accuracy per seed, got {len(search_acc)} "
                         f"and {len(random_acc)}")
    d = [100.0 * (float(s) - float(r)) for s, r in zip(search_acc, random_acc)]
    lo, hi = _t_interval(d)
    return {"search_minus_random_points": statistics.median(d), "mean_points": statistics.fmean(d),
            "ci95": [lo, hi], "p_value": _one_sided_p(d), "wins": sum(x > 0 for x in d), "differences_points": d}


def spread_and_noise(arch_acc: Sequence[float], seed_acc: Sequence[Sequence[float]]) -> dict[str, float]:
    """The regime's separation: standard deviation across archs vs across seeds of one arch, in points.

    Args:
        arch_acc: one stand-alone accuracy per random arch (one seed each).
        seed_acc: for each of a few archs, its accuracies over several training seeds.

    Returns:
        ``arch_spread_points`` (sample sd across ``arch_acc``), ``seed_noise_points`` (pooled sample sd of
        ``seed_acc``: the root of the mean within-arch variance), and their ratio ``spread_over_noise``.
    """
    spread = 100.0 * statistics.stdev(arch_acc)
    variances = [statistics.variance(v) for v in seed_acc if len(v) > 1]
    noise = 100.0 * math.sqrt(statistics.fmean(variances)) if variances else float("nan")
    return {"arch_spread_points": spread, "seed_noise_points": noise,
            "spread_over_noise": spread / noise if noise > 0 else float("inf")}


def quality_figures(bench: Any, seeds: Sequence[int], search_acc: Sequence[float], random_acc: Sequence[float]
                    ) -> dict[str, Any]:
    """Put the figures every quality benchmark reports (and the p < 0.05 goal) into ``bench``; returns the stats."""
    stats = paired_stats(search_acc, random_acc)
    bench.figure("seeds", list(seeds))
    bench.figure("search_acc", list(search_acc))
    bench.figure("random_acc", list(random_acc))
    for key in ("search_minus_random_points", "ci95", "p_value", "mean_points", "wins"):
        bench.figure(key, stats[key])
    bench.target("p_value", "<", 0.05)
    bench.settings["statistics"] = ("paired over seeds; median difference; 95% t interval of the mean difference; "
                                    "one-sided paired t-test")
    return stats


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """``--data``, ``--data-dir`` and the regime's overrides, for ``Bench.parse(extra=...)``."""
    parser.add_argument("--data", choices=("digits", "cifar10"), default="digits")
    parser.add_argument("--data-dir", default="data/cifar10", help="the folder holding cifar-10-batches-py/")
    parser.add_argument("--train-images", type=int, default=None)
    parser.add_argument("--val-images", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None, help="stand-alone training epochs")
    parser.add_argument("--workers", type=int, default=None,
                        help="processes for the stand-alone trainings (default: 2 where 2 cores exist, 1 with --quick)")


def regime_from_args(args: argparse.Namespace, base: Regime | None = None) -> Regime:
    """The regime of a command line: the digits default, CIFAR-10 at 32 px with larger splits, overrides applied;
    sets the number of worker processes (``--workers``) for the stand-alone trainings."""
    regime = base or Regime()
    quick = getattr(args, "quick", False)
    set_workers(args.workers or (1 if quick else min(2, os.cpu_count() or 1)))
    if args.data == "cifar10":
        regime = replace(regime, data="cifar10", data_dir=args.data_dir, input_size=32, train_images=10_000,
                         val_images=5_000, noise_std=0.0, test_from_pool=False)
    overrides = {"train_images": args.train_images, "val_images": args.val_images, "epochs": args.epochs}
    return replace(regime, **{k: v for k, v in overrides.items() if v is not None})
