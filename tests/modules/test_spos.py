"""SPOSModule + PathSampling: single-path training, untouched unrun candidates, identical paths on DDP ranks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_nas.callbacks import PathSampling
from lightning_nas.modules import SPOSModule
from tests.helpers.tiny_space import TinyDataModule, TinySpace


def _trainer(tmp_path: Path, callbacks: list[Callback], **kwargs: Any) -> Trainer:
    defaults = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, max_epochs=1, num_sanity_val_steps=0,
                    default_root_dir=tmp_path)
    return Trainer(callbacks=callbacks, **{**defaults, **kwargs})


class _Snapshot(Callback):
    """Record the active path and every parameter around one optimizer step."""

    def on_train_batch_start(self, trainer: Trainer, pl_module: SPOSModule, batch: Any, batch_idx: int) -> None:
        self.before = {n: p.detach().clone() for n, p in pl_module.named_parameters()}

    def on_train_batch_end(self, trainer: Trainer, pl_module: SPOSModule, *args: Any) -> None:
        self.arch = pl_module.space.active_arch
        self.inactive = {id(p) for p in pl_module.inactive_parameters()}
        self.after = {n: p.detach().clone() for n, p in pl_module.named_parameters()}
        self.state = trainer.optimizers[0].state
        self.params = dict(pl_module.named_parameters())


def test_unrun_candidates_get_no_update(tmp_path: Path) -> None:
    module = SPOSModule(TinySpace(), lr=0.1, weight_decay=0.1)
    snap = _Snapshot()
    _trainer(tmp_path, [PathSampling(seed=3), snap], max_steps=1, limit_val_batches=0).fit(module, TinyDataModule())
    inactive = [n for n, p in snap.params.items() if id(p) in snap.inactive]
    active = [n for n, p in snap.params.items() if id(p) not in snap.inactive]
    assert inactive and active
    for name in inactive:  # no gradient, no momentum buffer, no weight decay
        assert torch.equal(snap.before[name], snap.after[name]), name
        assert snap.params[name].grad is None
        assert "momentum_buffer" not in snap.state.get(snap.params[name], {})
    chosen = {f"features.{i}.candidates.{snap.arch[f'block{i}.op']}" for i in range(3)}
    moved = [n for n in active if not torch.equal(snap.before[n], snap.after[n])]
    assert any(any(n.startswith("space." + c) for c in chosen) for n in moved)


class _RecordPaths(Callback):
    def __init__(self) -> None:
        self.paths: list[dict[str, Any]] = []

    def on_train_batch_end(self, trainer: Trainer, pl_module: SPOSModule, *args: Any) -> None:
        self.paths.append(pl_module.space.active_arch)


def test_paths_are_a_function_of_seed_and_step(tmp_path: Path) -> None:
    runs = []
    for _ in range(2):
        rec = _RecordPaths()
        _trainer(tmp_path, [PathSampling(seed=7), rec], max_steps=6, limit_val_batches=0).fit(
            SPOSModule(TinySpace(), lr=0.05), TinyDataModule(batch_size=8))
        runs.append(rec.paths)
    assert runs[0] == runs[1] and len(runs[0]) == 6
    assert len({json.dumps(p, sort_keys=True) for p in runs[0]}) > 1  # a new path each step


def test_resumed_run_continues_the_same_paths(tmp_path: Path) -> None:
    full = _RecordPaths()
    _trainer(tmp_path, [PathSampling(seed=1), full], max_epochs=2, limit_val_batches=0).fit(
        SPOSModule(TinySpace(), lr=0.05), TinyDataModule(batch_size=16))
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    _trainer(tmp_path, [PathSampling(seed=1), ckpt], max_epochs=1, limit_val_batches=0,
             enable_checkpointing=True).fit(SPOSModule(TinySpace(), lr=0.05), TinyDataModule(batch_size=16))
    resumed = _RecordPaths()
    _trainer(tmp_path, [PathSampling(seed=1), resumed], max_epochs=2, limit_val_batches=0).fit(
        SPOSModule(TinySpace(), lr=0.05), TinyDataModule(batch_size=16), ckpt_path=str(tmp_path / "ckpt/last.ckpt"))
    assert resumed.paths == full.paths[len(full.paths) - len(resumed.paths):] and resumed.paths


def test_checkpoint_of_another_space_is_refused(tmp_path: Path) -> None:
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    _trainer(tmp_path, [PathSampling(), ckpt], max_steps=1, limit_val_batches=0, enable_checkpointing=True).fit(
        SPOSModule(TinySpace()), TinyDataModule())
    other = SPOSModule(TinySpace(blocks=2))
    with pytest.raises(ValueError, match="checkpoint was saved from space TinySpace"):
        _trainer(tmp_path, [PathSampling()], max_steps=2).fit(other, TinyDataModule(),
                                                               ckpt_path=str(tmp_path / "last.ckpt"))


class _AssertRanksAgree(Callback):
    """Inside each DDP worker: the path of every step and the final weights are the same on both ranks."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    def on_train_batch_end(self, trainer: Trainer, pl_module: SPOSModule, *args: Any) -> None:
        self.paths.append(json.dumps(pl_module.space.active_arch, sort_keys=True))

    def on_train_end(self, trainer: Trainer, pl_module: SPOSModule) -> None:
        digest = torch.tensor([float(hash(p) % 1_000_003) for p in self.paths])
        gathered = pl_module.all_gather(digest)
        assert torch.equal(gathered[0], gathered[1]), "ranks trained different paths"
        flat = torch.cat([p.detach().flatten() for p in pl_module.parameters()])
        weights = pl_module.all_gather(flat)
        assert torch.allclose(weights[0], weights[1]), "ranks ended with different weights"


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_two_ddp_ranks_train_identical_paths_and_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONHASHSEED", "0")
    trace = tmp_path / "paths.jsonl"
    trainer = _trainer(tmp_path, [PathSampling(seed=5, trace=str(trace)), _AssertRanksAgree()], devices=2,
                       strategy="ddp_spawn_find_unused_parameters_true", max_steps=4, limit_val_batches=0)
    trainer.fit(SPOSModule(TinySpace(), lr=0.05), TinyDataModule(batch_size=8))
    ranks = [[json.loads(line)["arch"] for line in (tmp_path / f"paths.rank{r}.jsonl").read_text().splitlines()]
             for r in (0, 1)]
    assert ranks[0] == ranks[1] and len(ranks[0]) == 4


def test_module_adds_uniform_path_sampling_only_when_the_trainer_has_none(tmp_path: Path) -> None:
    rec = _RecordPaths()
    trainer = _trainer(tmp_path, [rec], max_steps=6, limit_val_batches=0)
    trainer.fit(SPOSModule(TinySpace(), lr=0.05), TinyDataModule(batch_size=8))
    assert [type(cb) for cb in trainer.callbacks].count(PathSampling) == 1
    assert len({json.dumps(p, sort_keys=True) for p in rec.paths}) > 1  # a new path each step, not one fixed path
    own = PathSampling(seed=5, mode="uniform")
    trainer = _trainer(tmp_path, [own], max_steps=1, limit_val_batches=0)
    trainer.fit(SPOSModule(TinySpace(), lr=0.05), TinyDataModule(batch_size=8))
    assert [cb for cb in trainer.callbacks if isinstance(cb, PathSampling)] == [own]
