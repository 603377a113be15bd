"""Exact resume: a fit killed at an epoch boundary or mid-epoch, resumed from its checkpoint, ends bit-identical.

SPOS (with its evolution search), ProxylessNAS and PARSEC train on fake CIFAR-10 in the real on-disk layout through
``CIFAR10DataModule`` (shuffled, augmented). Each resumed run starts from a scrambled global RNG, so nothing may depend
on the process's RNG history: the data order and augmentation come from (seed, epoch, rank, index), the rest from
the checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_nas.callbacks import EvolutionSearch, PathSampling
from lightning_nas.datamodules import CIFAR10DataModule
from lightning_nas.modules import PARSECModule, ProxylessModule, SPOSModule
from lightning_nas.spaces import DartsCellSpace, MobileNetSpace, ShuffleNetSpace
from tests.helpers.fake_data import write_fake_cifar10
from tests.helpers.kill import Kill, Killed

pytestmark = pytest.mark.slow

EPOCHS, KILL_AT = 2, 7  # 5 batches per epoch: batch 7 is in the middle of the second epoch


def _spos() -> tuple[LightningModule, list[Callback]]:
    space = ShuffleNetSpace(num_classes=10, input_size=32, width_mult=0.25, stage_depths=[1, 1, 1, 1],
                            head_channels=32, dropout=0.2)  # dropout: module randomness from the global RNG
    return SPOSModule(space, lr=0.1, lr_decay="cosine"), [PathSampling(seed=1)]


def _proxyless() -> tuple[LightningModule, list[Callback]]:
    space = MobileNetSpace(num_classes=10, input_size=32, width_mult=0.25, stage_channels=(8, 8), stage_depths=(2, 1),
                           stage_strides=(2, 2), head_channels=16, stem_channels=8, first_block_channels=8)
    module = ProxylessModule(space, warmup_epochs=0, arch_delay_epochs=0, arch_update_every=2, arch_lr=0.05, seed=7,
                             measure_latency=False)
    return module, [PathSampling(seed=3)]


def _parsec() -> tuple[LightningModule, list[Callback]]:
    space = DartsCellSpace(num_classes=10, input_size=32, init_channels=4, layers=3)
    return PARSECModule(space, K=2, prior_lr=0.05, prior_update_every=2, seed=4), []


METHODS: dict[str, Callable[[], tuple[LightningModule, list[Callback]]]] = {
    "spos": _spos, "proxyless": _proxyless, "parsec": _parsec}


def _search() -> EvolutionSearch:
    return EvolutionSearch(population=4, topk=2, mutations=1, crossovers=1, generations=2, calib_images=16,
                           val_batches=1)


def _fit(method: str, data_dir: Path, root: Path, extra: list[Callback], ckpt_path: Path | None = None,
         rng_seed: int = 0) -> tuple[LightningModule, EvolutionSearch | None]:
    torch.manual_seed(0)  # the same initial weights for every fresh run
    module, callbacks = METHODS[method]()
    search = _search() if method == "spos" else None
    torch.manual_seed(rng_seed)  # a resumed process starts from another RNG history
    trainer = Trainer(accelerator="cpu", devices=1, max_epochs=EPOCHS, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, limit_val_batches=1, default_root_dir=root,
                      callbacks=[*callbacks, *extra, *([search] if search else [])])
    data = CIFAR10DataModule(str(data_dir), batch_size=8, num_workers=0, val_split=0.25, seed=5)
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    return module, search


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-identical (NaN where the other has NaN: an unset statistic)."""
    if not a.is_floating_point():
        return torch.equal(a, b)
    same_nan = a.shape == b.shape and torch.equal(a.isnan(), b.isnan())
    return same_nan and torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0))


def _outputs(module: LightningModule, search: EvolutionSearch | None, root: Path) -> dict[str, Any]:
    answer = json.loads((root / "best_arch.json").read_text())
    return {"arch": answer["arch"], "history": search.history if search else None,
            "best": search.best if search else None}


@pytest.mark.timeout(600)
@pytest.mark.parametrize("method", sorted(METHODS))
def test_killed_fit_resumes_bit_identical(method: str, tmp_path: Path) -> None:
    data_dir = write_fake_cifar10(tmp_path / "data", n_train=48, n_test=8)  # 36 train images: 5 batches of 8
    straight, search = _fit(method, data_dir, tmp_path / "straight", [])
    expected = _outputs(straight, search, tmp_path / "straight")

    ckpts = tmp_path / "ckpts"
    checkpoints = [ModelCheckpoint(dirpath=ckpts, filename="{step}", every_n_train_steps=1, save_top_k=-1),
                   ModelCheckpoint(dirpath=ckpts, filename="{epoch}", save_top_k=-1)]
    with pytest.raises(Killed):
        _fit(method, data_dir, tmp_path / "killed", [Kill(KILL_AT), *checkpoints])
    mid_epoch = max(ckpts.glob("step=*.ckpt"), key=lambda p: int(p.stem.split("=")[1]))
    assert mid_epoch.name == f"step={KILL_AT}.ckpt"
    for name, ckpt in {"epoch boundary": ckpts / "epoch=0.ckpt", "mid-epoch": mid_epoch}.items():
        root = tmp_path / name.replace(" ", "-")
        resumed, resumed_search = _fit(method, data_dir, root, [], ckpt_path=ckpt, rng_seed=1234)
        theirs, ours = straight.state_dict(), resumed.state_dict()
        differ = [k for k in theirs if not _same(theirs[k], ours[k])]
        assert not differ, f"{method} at the {name} ({ckpt.name}): {len(differ)} tensors differ, e.g. {differ[:3]}"
        assert _outputs(resumed, resumed_search, root) == expected, f"{method}: the search ends elsewhere ({name})"
