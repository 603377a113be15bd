"""InstaNASModule, its controller and AlternatingEpochs: policy gradient, freezing, DDP, resume, outputs."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import Callback, LightningDataModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from lightning_nas.callbacks.alternating_epochs import AlternatingEpochs
from lightning_nas.controllers.instanas_policy import (
    encourage,
    greedy_policy,
    latency_bounds,
    latency_reward,
    policy_loss,
    rewards,
    sample_policy,
)
from lightning_nas.cost.option_latency import OptionLatency
from lightning_nas.modules.instanas import InstaNASModule
from lightning_nas.spaces.instanas import InstaNASSpace
from tests.helpers.kill import Kill, Killed

STAGES = ((1, 16, 1, 1), (6, 24, 2, 2))


# --- test doubles (module level: DDP spawn pickles them) ------------------------------------
class ImageData(LightningDataModule):
    def __init__(self, n: int = 16, batch_size: int = 4) -> None:
        super().__init__()
        self.n, self.batch_size = n, batch_size

    def _data(self, seed: int) -> TensorDataset:
        gen = torch.Generator().manual_seed(seed)
        y = torch.arange(self.n) % 3
        x = torch.randn(self.n, 3, 16, 16, generator=gen) * 0.3 + y.view(-1, 1, 1, 1).float()
        return TensorDataset(x, y)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self._data(0), batch_size=self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self._data(1), batch_size=self.batch_size)


class Phases(Callback):
    """Record, per training batch, the phase and which side is frozen; per epoch, which side changed."""

    def __init__(self) -> None:
        self.batches: list[dict[str, Any]] = []
        self.changed: list[tuple[str, bool, bool]] = []

    @staticmethod
    def _flat(module: torch.nn.Module) -> torch.Tensor:
        return torch.cat([p.detach().flatten().clone() for p in module.parameters()])

    def on_train_epoch_start(self, trainer: Trainer, pl_module: InstaNASModule) -> None:
        self.start = (self._flat(pl_module.space), self._flat(pl_module.controller))

    def on_train_batch_start(self, trainer: Trainer, pl_module: InstaNASModule, batch: Any, batch_idx: int) -> None:
        space, ctrl = pl_module.space, pl_module.controller
        self.batches.append({
            "phase": pl_module.phase, "space_train": space.training, "ctrl_train": ctrl.training,
            "space_grad": {p.requires_grad for p in space.parameters()},
            "ctrl_grad": {p.requires_grad for p in ctrl.parameters()},
        })

    def on_train_epoch_end(self, trainer: Trainer, pl_module: InstaNASModule) -> None:
        space = not torch.equal(self.start[0], self._flat(pl_module.space))
        ctrl = not torch.equal(self.start[1], self._flat(pl_module.controller))
        self.changed.append((pl_module.phase, space, ctrl))


def _latency_file(folder: Path) -> str:
    """A fixed (synthetic) latency table: runs compared for equality must score with the same numbers."""
    space = _space()
    ms = torch.tensor([[4.0, 2.0, 5.0, 3.0, 1.0]]).repeat(space.num_cells, 1)
    meta = {"fingerprint": space.fingerprint(), "input_size": 16, "batch_size": 1, "device": "cpu",
            "forced": space.forced_mask().tolist()}
    path = folder / "latency.json"
    OptionLatency(ms, 1.0, meta).save(path)
    return str(path)


def _space() -> InstaNASSpace:
    torch.manual_seed(0)
    return InstaNASSpace(num_classes=3, input_size=16, width_mult=0.25, stages=STAGES, head_channels=32)


def _module(folder: Path, **kwargs: Any) -> InstaNASModule:
    args = dict(pretrain_epochs=1, search_epochs=2, finetune_epochs=1, lr=0.05, controller_lr=0.01,
                latency_cache=_latency_file(folder), num_examples=3)
    return InstaNASModule(_space(), **{**args, **kwargs})


def _trainer(folder: Path, epochs: int, callbacks: list[Callback], **kwargs: Any) -> Trainer:
    kwargs = {"enable_checkpointing": False, **kwargs}
    return Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_progress_bar=False,
                   enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=folder,
                   callbacks=callbacks, **kwargs)


# --- the controller's pure functions -------------------------------------------------------
def test_reward_shape_encouragement_and_bounds():
    t = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0])
    assert latency_reward(t, ub=3.0, lb=1.0).tolist() == [0.0, 0.0, 1.0, 0.0, 0.0]
    r = rewards(t, torch.tensor([True, True, True, False, True]), 3.0, 1.0, 30.0, 0.0)
    assert r.tolist() == [0.0, 0.0, 30.0, 0.0, 0.0]
    assert encourage(torch.tensor([0.0, 1.0])).tolist() == [pytest_approx(0.2), pytest_approx(0.8)]
    ub0, lb = latency_bounds(0.0, l_max=100.0, l_mbv2=40.0, l_min=5.0)
    ub1, _ = latency_bounds(1.0, l_max=100.0, l_mbv2=40.0, l_min=5.0)
    assert (ub0, ub1, lb) == (70.0, 20.0, 5.0)


def pytest_approx(v: float) -> Any:
    import pytest

    return pytest.approx(v)


def test_policy_gradient_raises_the_probability_of_a_rewarded_option():
    torch.manual_seed(0)
    logits = torch.zeros(1, 2, 5, requires_grad=True)
    optimizer = torch.optim.Adam([logits], lr=0.05)
    gen = torch.Generator().manual_seed(0)
    for _ in range(150):
        probs = torch.sigmoid(logits).expand(16, -1, -1)
        encouraged = encourage(probs)
        sampled = sample_policy(encouraged, gen)
        greedy = greedy_policy(probs.detach())
        reward = lambda p: p[:, 1, 3] * 1.0 - 0.1 * p.sum((1, 2))  # noqa: E731  (cell 1, option 3 pays)
        loss = policy_loss(encouraged, sampled, reward(sampled) - reward(greedy), entropy_weight=0.01)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    probs = torch.sigmoid(logits.detach())[0]
    assert probs[1, 3] > 0.9
    others = probs.flatten()[torch.arange(10) != 8]
    assert (others < 0.5).all()


# --- stages, freezing and outputs ------------------------------------------------------------
def test_alternating_epochs_freeze_the_right_side_and_fit_end_writes_outputs(tmp_path):
    model, phases = _module(tmp_path), Phases()
    _trainer(tmp_path, 4, [AlternatingEpochs(), phases]).fit(model, datamodule=ImageData())
    seen = [b["phase"] for b in phases.batches[::4]]
    assert seen == ["pretrain", "controller", "supernet", "finetune"]
    for b in phases.batches:
        ctrl = b["phase"] == "controller"
        assert b["space_train"] is not ctrl and b["ctrl_train"] is ctrl
        assert b["space_grad"] == {not ctrl} and b["ctrl_grad"] == {ctrl}
    assert phases.changed == [("pretrain", True, False), ("controller", False, True), ("supernet", True, False),
                              ("finetune", True, False)]
    assert model.controller_steps == 4 and model.supernet_steps == 12
    summary = json.loads((tmp_path / "instanas_summary.json").read_text())
    assert summary["samples"] == 16 and 0 <= summary["accuracy"] <= 1
    assert summary["min_latency_ms"] <= summary["mean_latency_ms"] <= summary["max_latency_ms"]
    for name in ("instanas_latency_hist.png", "instanas_option_usage.png", "instanas_easy_hard.png"):
        assert (tmp_path / name).stat().st_size > 1000
    assert all(p.requires_grad for p in model.parameters())  # unfrozen after fit


def test_pretraining_drops_paths_only_in_its_second_half(tmp_path):
    model = _module(tmp_path, pretrain_epochs=2, search_epochs=0, finetune_epochs=0, final_keep_prob=0.2)
    kept: list[float] = []

    class Keep(Callback):
        def on_train_batch_start(self, trainer: Trainer, pl_module: InstaNASModule, batch: Any, i: int) -> None:
            kept.append(pl_module._supernet_policy(batch[0], i).mean().item())

    _trainer(tmp_path, 2, [Keep()]).fit(model, datamodule=ImageData())
    assert kept[:4] == [1.0] * 4 and kept[4] == 1.0 and min(kept[5:]) < 0.9


def test_resume_mid_search_stage_continues_exactly(tmp_path):
    data = ImageData()
    straight = _module(tmp_path)
    _trainer(tmp_path / "a", 4, [AlternatingEpochs()]).fit(straight, datamodule=data)
    first = _module(tmp_path)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    stop = StopAfter(2)  # after the search stage's controller epoch, before its supernet epoch
    _trainer(tmp_path / "b", 4, [AlternatingEpochs(), ckpt, stop], enable_checkpointing=True).fit(first,
                                                                                                  datamodule=data)
    state = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert state["instanas"]["phase"] == "controller" and len(state["optimizer_states"]) == 2
    resumed = _module(tmp_path)
    _trainer(tmp_path / "c", 4, [AlternatingEpochs()]).fit(resumed, datamodule=data,
                                                           ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert (resumed.controller_steps, resumed.supernet_steps) == (straight.controller_steps, straight.supernet_steps)
    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_the_module_adds_alternating_epochs_only_when_the_trainer_has_none(tmp_path):
    model, phases = _module(tmp_path), Phases()
    trainer = _trainer(tmp_path, 4, [phases])
    trainer.fit(model, datamodule=ImageData())
    assert sum(isinstance(cb, AlternatingEpochs) for cb in trainer.callbacks) == 1
    assert [b["phase"] for b in phases.batches[::4]] == ["pretrain", "controller", "supernet", "finetune"]
    for b in phases.batches:  # the callback's freezing, re-applied after validation, as with the recipes' one
        ctrl = b["phase"] == "controller"
        assert b["space_train"] is not ctrl and b["ctrl_train"] is ctrl
    mine = AlternatingEpochs(controller_epochs=2)
    trainer = _trainer(tmp_path, 1, [mine])
    trainer.fit(_module(tmp_path), datamodule=ImageData())
    assert [cb for cb in trainer.callbacks if isinstance(cb, AlternatingEpochs)] == [mine]  # not replaced


@pytest.mark.slow
def test_killed_mid_epoch_resumes_bit_identical(tmp_path):
    """Killed in a search-stage meta-graph epoch (sampled, permuted policies), resumed from the last step's
    checkpoint: the draws continue from the module's own batch counter, so the weights end bit-identical."""
    from lightning_nas.datamodules import CIFAR10DataModule
    from tests.helpers.fake_data import write_fake_cifar10

    data_dir = write_fake_cifar10(tmp_path / "data", n_train=48, n_test=8)  # 36 train images: 5 batches of 8
    torch.manual_seed(0)
    space = InstaNASSpace(num_classes=10, input_size=32, width_mult=0.25, stages=STAGES, head_channels=32)
    latency = tmp_path / "latency.json"
    OptionLatency.build(space, repeats=1).save(latency)

    def fit(root: Path, callbacks: list[Callback], ckpt_path: Path | None = None) -> InstaNASModule:
        torch.manual_seed(0)
        module = InstaNASModule(copy.deepcopy(space), pretrain_epochs=1, search_epochs=2, finetune_epochs=1,
                                lr=0.05, controller_lr=0.01, latency_cache=str(latency), num_examples=2)
        data = CIFAR10DataModule(str(data_dir), batch_size=8, num_workers=0, val_split=0.25, seed=5)
        torch.manual_seed(1234 if ckpt_path else 0)  # a resumed process starts from another RNG history
        _trainer(root, 4, callbacks, limit_val_batches=1, enable_checkpointing=True).fit(
            module, datamodule=data, ckpt_path=ckpt_path)
        return module

    straight = fit(tmp_path / "straight", [])
    ckpts = tmp_path / "ckpts"
    every_step = ModelCheckpoint(dirpath=ckpts, filename="{step}", every_n_train_steps=1, save_top_k=-1)
    with pytest.raises(Killed):
        fit(tmp_path / "killed", [Kill(12), every_step])  # epoch 2 (meta-graph), its third batch
    ckpt = ckpts / "step=12.ckpt"
    assert torch.load(ckpt, weights_only=True)["instanas"]["batch_step"] == 12
    resumed = fit(tmp_path / "resumed", [], ckpt_path=ckpt)
    assert resumed.batch_step == straight.batch_step == 20
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


class SupernetSteps(Callback):
    """Per meta-graph step: phase, SGD settings, execution, and the stem weight before/after with its grad."""

    def __init__(self) -> None:
        self.steps: list[dict[str, Any]] = []
        self.executions: set[str] = set()

    def on_train_start(self, trainer: Trainer, pl_module: InstaNASModule) -> None:
        for cell in pl_module.space.cells:
            cell.register_forward_pre_hook(lambda m, a: self.executions.add(m.execution))

    def on_train_batch_start(self, *args: Any) -> None:
        self.executions = set()

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: InstaNASModule, optimizer: Any) -> None:
        if pl_module.phase == "controller":
            return
        w = pl_module.space.stem.conv.weight
        groups = [(g["lr"], g["momentum"], g["weight_decay"]) for g in trainer.optimizers[0].param_groups]
        self.steps.append({"phase": pl_module.phase, "groups": groups, "before": w.detach().clone(),
                           "grad": w.grad.detach().clone()})

    def on_train_batch_end(self, trainer: Trainer, pl_module: InstaNASModule, *args: Any) -> None:
        if pl_module.phase != "controller":
            self.steps[-1]["after"] = pl_module.space.stem.conv.weight.detach().clone()
            self.steps[-1]["execution"] = set(self.executions)


def test_search_trains_the_meta_graph_masked_with_plain_sgd(tmp_path):
    model, steps = _module(tmp_path), SupernetSteps()
    _trainer(tmp_path, 4, [AlternatingEpochs(), steps]).fit(model, datamodule=ImageData())
    phases = [s["phase"] for s in steps.steps]
    assert phases == ["pretrain"] * 4 + ["supernet"] * 4 + ["finetune"] * 4
    for s in steps.steps:
        assert s["execution"] == {"masked"}  # official: every option on the whole batch, whole-batch BN
        if s["phase"] == "supernet":  # official search.py: SGD(lr=net_lr=5e-4, weight_decay=0), no momentum
            assert s["groups"] == [(5e-4, 0.0, 0.0), (5e-4, 0.0, 0.0)]
            torch.testing.assert_close(s["after"], s["before"] - 5e-4 * s["grad"], atol=1e-9, rtol=0)
        else:
            assert [g[1:] for g in s["groups"]] == [(0.9, 4e-5), (0.9, 0.0)]
    first = next(s for s in steps.steps if s["phase"] == "finetune")  # momentum afresh: no pre-training buffer
    lr = first["groups"][0][0]
    expected = first["before"] - lr * (first["grad"] + 4e-5 * first["before"])
    torch.testing.assert_close(first["after"], expected, atol=1e-7, rtol=0)


def test_grouped_training_and_the_old_search_optimiser_are_named_options(tmp_path):
    model = _module(tmp_path, train_execution="grouped", search_lr=0.01, search_momentum=0.9,
                    search_weight_decay=4e-5, entropy="bernoulli")
    steps = SupernetSteps()
    _trainer(tmp_path, 4, [AlternatingEpochs(), steps]).fit(model, datamodule=ImageData())
    search = [s for s in steps.steps if s["phase"] == "supernet"]
    assert search and all(s["groups"] == [(0.01, 0.9, 4e-5), (0.01, 0.9, 0.0)] for s in search)
    assert all(s["execution"] == {"grouped"} for s in steps.steps)


def test_defaults_and_recipes_are_the_official_search(tmp_path):
    import yaml

    model = InstaNASModule(_space())
    hp = model.hparams
    assert (hp.search_lr, hp.search_momentum, hp.search_weight_decay) == (5e-4, 0.0, 0.0)
    assert (hp.train_execution, hp.entropy, hp.entropy_weight) == ("masked", "plogp", 0.8)
    assert model.space.identity == "per_option" and not model.controller.pool_input
    root = Path(__file__).resolve().parents[2] / "recipes" / "instanas"
    recipes = sorted(root.glob("*.yaml"))
    assert len(recipes) == 4
    for path in recipes:
        args = yaml.safe_load(path.read_text())["model"]["init_args"]
        assert args["search_lr"] == (0.01 if path.stem == "imagenet" else 5e-4), path.name  # official net_lr
        assert (args["search_momentum"], args["search_weight_decay"]) == (0.0, 0.0), path.name
        assert (args["train_execution"], args["entropy"]) == ("masked", "plogp"), path.name
        assert args["space"]["init_args"]["identity"] == "per_option", path.name


class StopAfter(Callback):
    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_train_epoch_end(self, trainer: Trainer, pl_module: Any) -> None:
        trainer.should_stop = trainer.current_epoch + 1 >= self.epochs


class CompareRanks(Callback):
    """Inside each DDP worker: the ranks hold the same controller and meta-graph, and the controller moved."""

    def __init__(self, out: str) -> None:
        self.out = out

    def on_train_start(self, trainer: Trainer, pl_module: InstaNASModule) -> None:
        self.start = torch.cat([p.detach().flatten().clone() for p in pl_module.controller.parameters()])

    def on_train_end(self, trainer: Trainer, pl_module: InstaNASModule) -> None:
        ctrl = torch.cat([p.detach().flatten() for p in pl_module.controller.parameters()])
        space = torch.cat([p.detach().flatten() for p in pl_module.space.parameters()])
        g_ctrl, g_space = pl_module.all_gather(ctrl), pl_module.all_gather(space)
        assert torch.equal(g_ctrl[0], g_ctrl[1]) and torch.equal(g_space[0], g_space[1])
        assert not torch.equal(ctrl, self.start)
        lat = pl_module.all_gather(pl_module.latency.option_ms.float())
        assert torch.equal(lat[0], lat[1])
        if trainer.is_global_zero:
            Path(self.out).write_text(json.dumps({"controller_steps": pl_module.controller_steps}))


@pytest.mark.slow
def test_ddp_ranks_agree_on_controller_weights(tmp_path):
    model = _module(tmp_path, pretrain_epochs=0, search_epochs=2, finetune_epochs=0, latency_cache=None,
                    latency_repeats=1)
    out = tmp_path / "ranks.json"
    trainer = _trainer(tmp_path, 2, [AlternatingEpochs(), CompareRanks(str(out))], devices=2,
                       strategy="ddp_spawn_find_unused_parameters_true")
    trainer.fit(model, datamodule=ImageData())
    assert json.loads(out.read_text())["controller_steps"] == 2  # 16 samples / 2 ranks / batch 4
