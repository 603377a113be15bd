"""Shared by the SPOS benchmarks: the quickstart's small ShuffleNet supernet trained with SPOS on digits."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch import Callback, Trainer, seed_everything

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


def train_supernet(epochs: int, seed: int, callbacks: Sequence[Callback] = (), lr: float = 0.2
                   ) -> tuple[SPOSModule, DigitsDataModule, Trainer]:
    """SPOS on digits (uniform paths, the quickstart's optimiser) for ``epochs`` epochs on the CPU."""
    quiet()
    seed_everything(seed, verbose=False)
    dm = DigitsDataModule(batch_size=BATCH, seed=42)
    module = SPOSModule(make_space(), lr=lr, weight_decay=4e-5, lr_decay="cosine")
    trainer = Trainer(accelerator="cpu", devices=1, max_epochs=epochs, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      limit_val_batches=0, callbacks=[PathSampling(seed=seed), *callbacks])
    trainer.fit(module, datamodule=dm)
    return module, dm, trainer


def search_data(dm: DigitsDataModule, calib_images: int) -> tuple[list[torch.Tensor], list[Any]]:
    """The calibration inputs and validation batches EvolutionSearch uses (same helpers, same seed)."""
    from lightning_nas.search import collect_batches, collect_inputs

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        calib = collect_inputs(dm.calibration_dataloader(), calib_images, "cpu")
    return calib, collect_batches(dm.val_dataloader(), None, "cpu")
