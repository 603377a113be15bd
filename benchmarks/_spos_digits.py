"""Shared by the SPOS benchmarks: the quickstart's small ShuffleNet supernet trained with SPOS on digits, and
the inherited-weight scorer (BN re-calibrated, top-1 on the validation split) that ``EvolutionSearch`` applies."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from lightning.pytorch import Callback, LightningDataModule, Trainer, seed_everything
from torch import nn

from lightning_nas.callbacks import PathSampling
from lightning_nas.datamodules import DigitsDataModule
from lightning_nas.modules import SPOSModule
from lightning_nas.spaces import ShuffleNetSpace

BATCH = 64


def quiet() -> None:
    """Keep Lightning's banners and hints off stdout (the last stdout line is the benchmark's JSON)."""
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("lightning.fabric").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


def make_space() -> ShuffleNetSpace:
    """``recipes/quickstart.yaml``'s supernet: 5 choice blocks, 4 ops each (1,024 archs)."""
    return ShuffleNetSpace(num_classes=10, input_size=32, width_mult=0.25, stage_depths=(1, 1, 2, 1),
                           head_channels=256, dropout=0.0)


def train_supernet(epochs: int, seed: int, callbacks: Sequence[Callback] = (), lr: float = 0.2,
                   datamodule: LightningDataModule | None = None, space: nn.Module | None = None, **spos: Any
                   ) -> tuple[SPOSModule, LightningDataModule, Trainer]:
    """SPOS (uniform paths, the quickstart's optimiser unless ``spos`` overrides ``SPOSModule``'s arguments) for
    ``epochs`` epochs on the CPU; on digits and the quickstart's space unless ``datamodule``/``space`` are given."""
    quiet()
    seed_everything(seed, verbose=False)
    dm = datamodule if datamodule is not None else DigitsDataModule(batch_size=BATCH, seed=42)
    module = SPOSModule(space if space is not None else make_space(), **{"lr": lr, "weight_decay": 4e-5,
                                                                         "lr_decay": "cosine", **spos})
    trainer = Trainer(accelerator="cpu", devices=1, max_epochs=epochs, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      limit_val_batches=0, callbacks=[PathSampling(seed=seed), *callbacks])
    trainer.fit(module, datamodule=dm)
    return module, dm, trainer


def search_data(dm: Any, calib_images: int) -> tuple[list[torch.Tensor], list[Any]]:
    """The calibration inputs and validation batches EvolutionSearch uses (same helpers, same seed)."""
    from lightning_nas.search import collect_batches, collect_inputs

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        calib = collect_inputs(dm.calibration_dataloader(), calib_images, "cpu")
    return calib, collect_batches(dm.val_dataloader(), None, "cpu")


def inherited_scorer(space: nn.Module, calib: list, val: list) -> Callable[[list[dict]], list[float]]:
    """``score(archs) -> accuracies`` with the supernet's weights (BN re-calibrated on ``calib``, top-1 on ``val``),
    cached by arch (scores are deterministic)."""
    from lightning_nas.search import accuracy, arch_key, recalibrate_bn
    from lightning_nas.search.evaluate import restore_buffers, save_buffers

    trained = save_buffers(space)
    cache: dict[str, float] = {}

    def score(archs: list[dict]) -> list[float]:
        out = []
        for arch in archs:
            key = arch_key(arch)
            if key not in cache:
                restore_buffers(space, trained)
                space.activate(arch)
                recalibrate_bn(space, calib)
                cache[key] = accuracy(space, val)
            out.append(cache[key])
        return out

    return score
