"""ProxylessModule: the schedule, the latency loss, REINFORCE, DDP agreement, resume, and the outputs at fit end
(the binary-gate estimator itself: tests/strategies/test_binary_gates.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningDataModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import DDPStrategy
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_nas import load_arch
from lightning_nas.callbacks.path_sampling import PathSampling
from lightning_nas.cost import LatencyTable
from lightning_nas.modules.proxyless import ProxylessModule
from lightning_nas.nn import LayerChoice
from lightning_nas.spaces.base import SearchSpace
from lightning_nas.spaces.mobilenet import MobileNetSpace
from tests.helpers.tiny_space import Scale


# --- test doubles (module level: DDP spawn pickles them) ------------------------------------
class ToySpace(SearchSpace):
    """Inputs ``(n, 3, 1, 1)``, ``blocks`` parameter-free op choices, a linear head initialised to the identity."""

    def __init__(self, candidates: dict[str, float], blocks: int = 2) -> None:
        super().__init__()
        self.input_size, self.num_classes = 1, 3
        self.stem = nn.Flatten(1)
        self.features = nn.Sequential(
            *[LayerChoice({k: Scale(v) for k, v in candidates.items()}, f"block{i}.op") for i in range(blocks)]
        )
        self.head = nn.Linear(3, 3)
        with torch.no_grad():
            self.head.weight.copy_(torch.eye(3))
            self.head.bias.zero_()


class ToyData(LightningDataModule):
    """``x = 3 · one_hot(y) + noise``: the identity path classifies perfectly."""

    def __init__(self, n_train: int = 24, n_val: int = 24, batch_size: int = 8) -> None:
        super().__init__()
        self.n_train, self.n_val, self.batch_size = n_train, n_val, batch_size

    def _data(self, n: int, seed: int) -> TensorDataset:
        g = torch.Generator().manual_seed(seed)
        y = torch.arange(n) % 3
        x = 3 * F.one_hot(y, 3).float() + 0.1 * torch.randn(n, 3, generator=g)
        return TensorDataset(x.view(n, 3, 1, 1), y)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self._data(self.n_train, 0), batch_size=self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self._data(self.n_val, 1), batch_size=self.batch_size)


class ImageData(LightningDataModule):
    """Random 8×8 images, 3 classes, for the tiny MobileNetSpace."""

    def __init__(self, n: int = 32, batch_size: int = 8) -> None:
        super().__init__()
        self.n, self.batch_size = n, batch_size

    def _data(self, seed: int) -> TensorDataset:
        g = torch.Generator().manual_seed(seed)
        y = torch.arange(self.n) % 3
        return TensorDataset(torch.randn(self.n, 3, 8, 8, generator=g) + y.view(-1, 1, 1, 1).float(), y)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self._data(0), batch_size=self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self._data(1), batch_size=self.batch_size)


def tiny_mobilenet() -> MobileNetSpace:
    torch.manual_seed(0)
    return MobileNetSpace(num_classes=3, input_size=8, width_mult=0.25, stage_channels=(8, 8), stage_depths=(2, 1),
                          stage_strides=(1, 2), head_channels=16, stem_channels=8, first_block_channels=8)


def toy_latency_table(space: SearchSpace, ms: dict[str, float], path: Path, fixed: float = 10.0) -> str:
    units = [{"name": f"features.{i}", "keys": [f"block{i}.op"], "ms": {json.dumps([k]): v for k, v in ms.items()}}
             for i in range(len(space.features))]
    meta = {"format": 1, "space": space.space_name, "fingerprint": space.fingerprint(), "input_size": 1,
            "batch_size": 1, "device": "cpu"}
    return str(LatencyTable(meta, fixed, units).save(path))


def fit(model: ProxylessModule, data: LightningDataModule, root: Path, epochs: int = 2, **kwargs: Any) -> Trainer:
    callbacks = kwargs.pop("callbacks", [])
    trainer = Trainer(max_epochs=epochs, accelerator="cpu", devices=kwargs.pop("devices", 1), logger=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=root,
                      callbacks=[PathSampling(seed=3), *callbacks], num_sanity_val_steps=0,
                      enable_checkpointing=kwargs.pop("enable_checkpointing", False), **kwargs)
    trainer.fit(model, datamodule=data)
    return trainer


# --- the module ---------------------------------------------------------------------------
class RecordArchSteps(Callback):
    """After every arch step: candidates outside the sampled pair kept their probabilities; zero samples no update."""

    def on_train_batch_start(self, trainer: Trainer, pl_module: ProxylessModule, batch: Any, batch_idx: int) -> None:
        self.steps = pl_module.arch_steps
        self.before = {k: torch.softmax(a.detach().clone(), 0) for k, a in pl_module._logits().items()}

    def on_train_batch_end(self, trainer: Trainer, pl_module: ProxylessModule, *args: Any) -> None:
        if pl_module.arch_steps == self.steps:
            assert all(torch.equal(torch.softmax(a.detach(), 0), self.before[k])
                       for k, a in pl_module._logits().items())
            return
        for name, sample in pl_module.last_samples.items():
            after = torch.softmax(pl_module._logits()[name].detach(), 0)
            others = [k for k in range(len(after)) if k not in sample.involved]
            torch.testing.assert_close(after[others], self.before[name][others], atol=1e-6, rtol=0)
            if pl_module._decisions[name][sample.active] == "zero":
                torch.testing.assert_close(after, self.before[name], atol=1e-7, rtol=0)


def test_path_sampling_is_added_only_when_the_trainer_has_none(tmp_path):
    """The module never picks paths itself: without a PathSampling it adds one with its own seed."""
    model = ProxylessModule(ToySpace({"a": 1.0, "b": -1.0}), warmup_epochs=1, seed=5, measure_latency=False)
    trainer = Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=tmp_path, num_sanity_val_steps=0,
                      enable_checkpointing=False)
    trainer.fit(model, datamodule=ToyData())
    added = [cb for cb in trainer.callbacks if isinstance(cb, PathSampling)]
    assert [(cb.seed, cb.sampled) for cb in added] == [(5, 3)]
    own = fit(ProxylessModule(ToySpace({"a": 1.0, "b": -1.0}), warmup_epochs=1, seed=5, measure_latency=False),
              ToyData(), tmp_path / "own", epochs=1)
    assert [cb.seed for cb in own.callbacks if isinstance(cb, PathSampling)] == [3]  # the trainer's own is kept


def test_warmup_is_uniform_and_updates_no_arch(tmp_path):
    model = ProxylessModule(ToySpace({"a": 1.0, "b": -1.0}), lr=0.0, warmup_lr=None, warmup_epochs=1,
                            arch_update_every=1, measure_latency=False)
    start = [a.detach().clone() for a in model.arch_logits]
    assert model.sample_path(torch.Generator()) is None
    fit(model, ToyData(), tmp_path, epochs=1)
    assert model.arch_steps == 0 and all(torch.equal(a, b) for a, b in zip(start, model.arch_logits))


class ArchStepEpochs(Callback):
    """The epoch of every arch step, and the candidates each step involved."""

    def __init__(self) -> None:
        self.epochs: list[int] = []
        self.involved: list[tuple[int, ...]] = []

    def on_train_batch_end(self, trainer: Trainer, pl_module: ProxylessModule, *args: Any) -> None:
        if pl_module.arch_steps > len(self.epochs):
            self.epochs.append(trainer.current_epoch)
            self.involved += [s.involved for s in pl_module.last_samples.values()]


def test_official_schedule_and_estimator_by_default(tmp_path):
    """Official ``search/``: no arch step in the first joint epoch (``nas_manager.py``, ``if epoch > 0``) and
    ``--grad_binary_mode full_v2`` (every candidate's gate gradient, ``imagenet_arch_search.py``)."""
    model = ProxylessModule(ToySpace({"a": 1.0, "b": 0.5, "c": -1.0}), lr=0.0, warmup_lr=None, warmup_epochs=1,
                            arch_update_every=1, measure_latency=False)
    assert model.hparams.arch_delay_epochs == 1 and model.hparams.arch_estimator == "full"
    steps = ArchStepEpochs()
    fit(model, ToyData(), tmp_path, epochs=3, callbacks=[steps])
    assert steps.epochs == [2, 2, 2] and model.arch_steps == 3  # warm-up (0), first joint epoch (1): none
    assert steps.involved and all(inv == (0, 1, 2) for inv in steps.involved)
    assert model.sample_path(torch.Generator()) is not None  # paths from softmax(α) from epoch 1 on


@pytest.mark.parametrize(("loss_type", "estimator"), [("mul", "two_path"), ("add", "two_path"), ("mul", "full")])
def test_latency_loss_moves_probability_to_the_cheaper_of_equal_candidates(tmp_path, loss_type, estimator):
    space = ToySpace({"fast": 1.0, "slow": 1.0})  # identical outputs: only the latency term tells them apart
    table = toy_latency_table(space, {"fast": 1.0, "slow": 5.0}, tmp_path / "table.json")
    model = ProxylessModule(space, lr=0.0, warmup_lr=None, warmup_epochs=0, arch_delay_epochs=0, arch_update_every=1,
                            arch_lr=0.05, latency_table=table, target_latency=12.0, loss_type=loss_type,
                            arch_estimator=estimator, measure_latency=False)
    fit(model, ToyData(), tmp_path, epochs=2, callbacks=[RecordArchSteps()])
    assert model.arch_steps == 6
    assert all(p["fast"] > 0.55 for p in model.arch_probabilities().values())
    saved = json.loads((tmp_path / "best_arch.json").read_text())
    assert saved["arch"] == {"block0.op": "fast", "block1.op": "fast"} and saved["predicted_latency_ms"] == 12.0


def test_reinforce_moves_probability_to_the_rewarded_candidate(tmp_path):
    torch.manual_seed(0)  # α's initialisation: not whatever the tests before this one left in the global RNG
    space = ToySpace({"good": 1.0, "bad": 0.0, "worse": 0.0})  # only good∘good classifies (others: 1/3)
    model = ProxylessModule(space, lr=0.0, warmup_lr=None, warmup_epochs=0, arch_delay_epochs=0, arch_update_every=1,
                            arch_lr=0.2, arch_estimator="reinforce", reinforce_samples=8, measure_latency=False)
    # 6 epochs (18 arch steps): after 3, min P(good) was 0.84 or 0.41 depending on α's 1e-3 initialisation
    # (5 of 12 seeds below 0.5); after 6 it is 0.92 to 0.95 for all 12
    fit(model, ToyData(), tmp_path, epochs=6)
    assert all(p["good"] > 0.5 for p in model.arch_probabilities().values())
    assert 0.0 < float(model.reinforce_baseline) <= 1.0
    assert model.state_dict()["reinforce_baseline"] == model.reinforce_baseline  # checkpointed with the weights


def test_best_arch_json_has_costs_and_measured_latency(tmp_path):
    space = tiny_mobilenet()
    model = ProxylessModule(space, warmup_epochs=0, arch_delay_epochs=0, arch_update_every=2, latency_metric="macs",
                            target_latency=1e5)
    fit(model, ImageData(n=16), tmp_path, epochs=1, callbacks=[RecordArchSteps()])
    doc = json.loads(model.best_arch_path.read_text())
    assert load_arch(model.best_arch_path, space) == model.best_arch()
    assert doc["macs"] > 0 and doc["measured_latency_ms"] > 0 and set(doc["probabilities"]) == set(space.decisions())


def test_bad_configurations_fail_before_training(tmp_path):
    space = ToySpace({"fast": 1.0, "slow": 1.0})
    table = toy_latency_table(space, {"fast": 1.0, "slow": 5.0}, tmp_path / "t.json")
    with pytest.raises(ValueError, match="below the space's fastest arch"):
        ProxylessModule(space, latency_table=table, target_latency=11.0)
    with pytest.raises(ValueError, match="fingerprint"):
        ProxylessModule(ToySpace({"fast": 1.0, "slow": 1.0}, blocks=3), latency_table=table, target_latency=20.0)
    with pytest.raises(ValueError, match="needs a cost model"):
        ProxylessModule(space, target_latency=20.0)
    with pytest.raises(ValueError, match="needs target_latency"):
        ProxylessModule(space, latency_table=table)
    with pytest.raises(ValueError, match="arch_estimator"):
        ProxylessModule(space, arch_estimator="darts")
    with pytest.raises(ValueError, match="no LayerChoice owns"):
        ProxylessModule(MobileNetSpace(num_classes=3, input_size=8, width_mult=0.25, stage_depths=(1,) * 6,
                                       bits=(4, 8)))
    model = ProxylessModule(space, measure_latency=False)
    with pytest.raises(ValueError, match="LightningDataModule"):
        Trainer(max_epochs=1, logger=False, enable_progress_bar=False, default_root_dir=tmp_path).fit(
            model, ToyData().train_dataloader())


def test_checkpoint_of_another_space_is_refused():
    saved: dict[str, Any] = {}
    ProxylessModule(ToySpace({"a": 1.0, "b": 2.0})).on_save_checkpoint(saved)
    with pytest.raises(ValueError, match="fingerprint"):
        ProxylessModule(ToySpace({"a": 1.0, "b": 2.0}, blocks=3)).on_load_checkpoint(saved)


def _search(**kwargs: Any) -> ProxylessModule:
    return ProxylessModule(tiny_mobilenet(), warmup_epochs=1, arch_delay_epochs=0, arch_update_every=2, arch_lr=0.05,
                           seed=7, measure_latency=False, **kwargs)


class StopAfter(Callback):
    """Interrupt a run after ``epochs`` epochs (its schedule still planned for the full run)."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_train_epoch_end(self, trainer: Trainer, pl_module: ProxylessModule) -> None:
        trainer.should_stop = trainer.current_epoch + 1 >= self.epochs


def test_resume_continues_arch_optimizers_and_schedule(tmp_path):
    data = ImageData(n=24)
    straight = _search()
    fit(straight, data, tmp_path / "a", epochs=3)
    first = _search()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    fit(first, data, tmp_path / "b", epochs=3, callbacks=[StopAfter(2), ckpt], enable_checkpointing=True)
    state = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert state["proxyless"]["arch_steps"] == first.arch_steps > 0 and len(state["optimizer_states"]) == 2
    resumed = _search()
    trainer = Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path / "c",
                      callbacks=[PathSampling(seed=3)], enable_checkpointing=False)
    trainer.fit(resumed, datamodule=data, ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert resumed.arch_steps == straight.arch_steps
    for a, b in zip(straight.arch_logits, resumed.arch_logits):
        assert torch.equal(a, b)
    for a, b in zip(straight.space.parameters(), resumed.space.parameters()):
        assert torch.equal(a, b)
    opt_a, opt_b = straight.optimizers()[1].optimizer, resumed.optimizers()[1].optimizer
    for pa, pb in zip(straight.arch_logits, resumed.arch_logits):
        assert torch.equal(opt_a.state[pa]["exp_avg_sq"], opt_b.state[pb]["exp_avg_sq"])
    assert straight.lr_schedulers().last_epoch == resumed.lr_schedulers().last_epoch


class CompareRanks(Callback):
    """Inside each DDP worker: every rank holds the same α and weights, and the arch did move."""

    def __init__(self, out: str) -> None:
        self.out = out

    def on_train_start(self, trainer: Trainer, pl_module: ProxylessModule) -> None:
        self.start = torch.cat([a.detach().clone() for a in pl_module.arch_logits])

    def on_train_end(self, trainer: Trainer, pl_module: ProxylessModule) -> None:
        alpha = torch.cat([a.detach() for a in pl_module.arch_logits])
        weights = torch.cat([p.detach().flatten() for p in pl_module.space.parameters()])
        gathered_alpha, gathered_weights = pl_module.all_gather(alpha), pl_module.all_gather(weights)
        assert torch.equal(gathered_alpha[0], gathered_alpha[1])
        assert torch.equal(gathered_weights[0], gathered_weights[1])
        assert pl_module.arch_steps > 0 and not torch.equal(alpha, self.start)
        if trainer.is_global_zero:
            Path(self.out).write_text(json.dumps({"arch_steps": pl_module.arch_steps}))


@pytest.mark.slow
@pytest.mark.parametrize("estimator", ["two_path", "reinforce"])
def test_ddp_ranks_keep_identical_arch_and_weights(tmp_path, estimator):
    model = ProxylessModule(tiny_mobilenet(), warmup_epochs=0, arch_delay_epochs=0, arch_update_every=1, arch_lr=0.05,
                            arch_estimator=estimator, reinforce_samples=3, latency_metric="macs",
                            target_latency=1e5, measure_latency=False)
    out = tmp_path / "ranks.json"
    fit(model, ImageData(n=16, batch_size=4), tmp_path, epochs=1, devices=2,
        strategy=DDPStrategy(start_method="spawn", find_unused_parameters=True),
        callbacks=[CompareRanks(str(out))])
    assert json.loads(out.read_text())["arch_steps"] == 2
