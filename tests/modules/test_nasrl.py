"""``NASRLModule`` + ``ChildRecorder``: learning, DDP consistency, resume, real children on tiny data."""

from __future__ import annotations

import json
import zlib

import pytest
import torch
from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from lightning_nas.callbacks.child_recorder import ChildRecorder
from lightning_nas.datamodules.text import TextDataModule
from lightning_nas.errors import ConfigError, PrerequisiteError
from lightning_nas.modules.nasrl import NASRLModule
from lightning_nas.modules.nasrl_data import NASRLData
from lightning_nas.spaces.layer_tokens import LayerTokenSpace, child_from_arch_file
from lightning_nas.spaces.rnn_cell import RNNCellSpace
from tests.helpers.kill import Kill, Killed


class TinyImages(LightningDataModule):
    """16 random 8×8 images, 3 classes; ``val_dataloader`` is a held-out part."""

    num_classes, input_size = 3, 8

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(24, 3, 8, 8, generator=g), torch.randint(0, 3, (24,), generator=g)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.x[:16], self.y[:16]), batch_size=8, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.x[16:], self.y[16:]), batch_size=8)


class ToyReward(NASRLModule):
    """No child training: reward 1 when layer 0's filter height is 3 (fast and deterministic)."""

    def train_child(self, arch, step, index):
        self.trained = [*getattr(self, "trained", []), index]
        return float(arch["layer0.fh"] == 3), 0.0, 1.0, 1.0


class CheckedToyReward(ToyReward):
    """Asserts inside each DDP worker that archs and controllers agree and the children were split."""

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        flat = torch.cat([p.detach().flatten() for p in self.controller.parameters()])
        gathered = self.all_gather(flat)
        assert torch.equal(gathered[0], gathered[1]), "controller weights differ across ranks"
        mine = torch.tensor(self.trained[-2:])
        ranks = self.all_gather(mine)
        assert set(ranks[0].tolist()).isdisjoint(ranks[1].tolist()), "ranks trained the same children"
        assert sorted(ranks.flatten().tolist()) == [0, 1, 2, 3]
        archs = self.all_gather(torch.tensor([zlib.crc32(json.dumps(c["arch"], sort_keys=True).encode())
                                              for c in self.last_children]))
        assert torch.equal(archs[0], archs[1]), "ranks sampled different archs"


def _module(cls=ToyReward, **kwargs) -> NASRLModule:
    args = {"space": LayerTokenSpace(num_layers=2, num_filters=[4, 8]), "controller_steps": 4, "children_per_step": 4,
            "child_epochs": 1, "child_progress": False, "lr": 0.05, **kwargs}
    return cls(**args)


def _trainer(tmp_path, **kwargs) -> Trainer:
    args = {"accelerator": "cpu", "devices": 1, "max_epochs": 1, "logger": False, "enable_checkpointing": False,
            "enable_progress_bar": False, "enable_model_summary": False, "default_root_dir": str(tmp_path), **kwargs}
    return Trainer(**args)


def _p_fh3(module: NASRLModule) -> float:
    with torch.no_grad():
        arch = module.sample_archs(0, 1)[0]
        score = module.controller.log_prob({**arch, "layer0.fh": 3}, module.program(0))
    return float(score.token_log_probs["layer0.fh"].exp())


def test_toy_reward_through_the_module_and_outputs(tmp_path) -> None:
    module = _module(controller_steps=25, baseline_decay=0.8)
    before = _p_fh3(module)
    update = ChildRecorder(top_k=3)
    trainer = _trainer(tmp_path, callbacks=[update])
    trainer.fit(module, datamodule=NASRLData(TinyImages()))
    assert trainer.global_step == 25
    assert _p_fh3(module) > before + 0.2
    metrics = trainer.callback_metrics
    assert {"nasrl/reward", "nasrl/baseline", "nasrl/entropy", "nasrl/depth"} <= set(metrics)
    folder = update.folder  # this run's own folder; the best arch is also copied to default_root_dir
    assert folder is not None and folder.parent == tmp_path and folder.name.startswith("nasrl-")
    assert len((folder / "children.jsonl").read_text().splitlines()) == 100
    best = json.loads((folder / "best_arch.json").read_text())
    assert json.loads((tmp_path / "best_arch.json").read_text())["run_folder"] == str(folder)
    assert best["space"] == "LayerTokenSpace" and best["reward"] == 1.0
    assert child_from_arch_file(folder / "best_arch.json", num_classes=3)(torch.randn(2, 3, 8, 8)).shape == (2, 3)


def test_depth_schedule() -> None:
    module = _module(depth_start=6, depth_every=16, max_depth=10, space=LayerTokenSpace())
    assert [module.depth(s) for s in (0, 3, 4, 8, 100)] == [6, 6, 8, 10, 10]
    assert len([k for k in module.sample_archs(4, 1)[0] if k.endswith(".fh")]) == 8


@pytest.mark.slow
def test_ddp_two_ranks_split_children_and_agree(tmp_path) -> None:
    module = _module(CheckedToyReward, controller_steps=1)
    trainer = _trainer(tmp_path, devices=2, strategy="ddp_spawn")
    trainer.fit(module, datamodule=NASRLData(TinyImages()))  # the workers assert; a failure there fails fit


def test_resume_continues_baseline_controller_and_optimizer(tmp_path) -> None:
    straight = _module(controller_steps=1, baseline_decay=0.5)
    cb = ChildRecorder()
    _trainer(tmp_path / "a", max_epochs=3, callbacks=[cb]).fit(straight, datamodule=NASRLData(TinyImages()))

    first = _module(controller_steps=1, baseline_decay=0.5)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    _trainer(tmp_path / "b", max_epochs=2, callbacks=[ChildRecorder(), ckpt],
             enable_checkpointing=True).fit(first, datamodule=NASRLData(TinyImages()))
    assert first.baseline != straight.baseline  # two steps of three: the resumed run must restore it
    resumed, cb2 = _module(controller_steps=1, baseline_decay=0.5), ChildRecorder()
    trainer = _trainer(tmp_path / "b", max_epochs=3, callbacks=[cb2])
    trainer.fit(resumed, datamodule=NASRLData(TinyImages()), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert trainer.global_step == 3
    assert resumed.baseline == straight.baseline and resumed.best_reward == straight.best_reward
    assert cb2.children_seen == cb.children_seen == 12 and cb2.best == cb.best
    for a, b in zip(straight.controller.parameters(), resumed.controller.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    other = _module(controller_steps=1, space=LayerTokenSpace(num_layers=2, num_filters=[4, 16]))
    with pytest.raises(PrerequisiteError, match="fingerprint"):  # a checkpoint of another space is refused
        _trainer(tmp_path / "c", max_epochs=4).fit(other, datamodule=NASRLData(TinyImages()),
                                                    ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    sa = straight.optimizers().optimizer.state_dict()["state"]
    sb = resumed.optimizers().optimizer.state_dict()["state"]
    torch.testing.assert_close(sa[0]["exp_avg"], sb[0]["exp_avg"], rtol=0, atol=0)


def test_fast_dev_run_trains_real_image_and_text_children(tmp_path) -> None:
    module = _module(NASRLModule, children_per_step=8)
    trainer = _trainer(tmp_path, fast_dev_run=2)
    trainer.fit(module, datamodule=NASRLData(TinyImages()))
    assert len(module.last_children) == 2 and all(0 <= c["score"] <= 1 for c in module.last_children)
    text = NASRLModule(RNNCellSpace(base=4, hidden_size=8), children_per_step=2, child_progress=False)
    trainer = _trainer(tmp_path, fast_dev_run=1)
    trainer.fit(text, datamodule=NASRLData(TextDataModule(batch_size=4, bptt=8)))
    child = text.last_children[0]
    assert text.space.num_classes == TextDataModule().vocab_size  # taken from the datamodule
    assert child["score"] > 1 and child["reward"] == 80.0 / child["score"] ** 2


def test_a_plain_datamodule_is_refused_with_the_fix(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"TinyImages.*datamodule=NASRLData\(datamodule\)"):
        _trainer(tmp_path).fit(_module(), datamodule=TinyImages())


def test_the_module_adds_a_recorder_and_keeps_the_trainers_own(tmp_path) -> None:
    module = _module(controller_steps=2)
    trainer = _trainer(tmp_path)
    trainer.fit(module, datamodule=NASRLData(TinyImages()))
    recorders = [cb for cb in trainer.callbacks if isinstance(cb, ChildRecorder)]
    assert len(recorders) == 1 and recorders[0].children_seen == 8
    assert (tmp_path / "best_arch.json").is_file()
    mine = ChildRecorder(top_k=2)
    trainer = _trainer(tmp_path, callbacks=[mine])
    trainer.fit(_module(controller_steps=1), datamodule=NASRLData(TinyImages()))
    assert [cb for cb in trainer.callbacks if isinstance(cb, ChildRecorder)] == [mine] and len(mine.best) == 2


def test_nasrl_data_hands_the_run_to_the_childrens_datamodule() -> None:
    inner = TextDataModule(batch_size=4, bptt=8)
    data = NASRLData(inner)
    assert data.num_classes == inner.num_classes
    data.check_data()  # the shipped corpus is there
    with pytest.raises(TypeError, match="wraps a LightningDataModule"):
        NASRLData(object())


def test_a_fit_killed_mid_epoch_resumes_bit_identical(tmp_path) -> None:
    """Controller steps are Lightning's steps, so a fit killed in the middle of an epoch and resumed from its last
    checkpoint ends where an uninterrupted one does: controller, optimizer, baseline, step count, recorded children."""
    straight, cb = _module(controller_steps=3, baseline_decay=0.5), ChildRecorder()
    _trainer(tmp_path / "a", max_epochs=2, callbacks=[cb]).fit(straight, datamodule=NASRLData(TinyImages()))

    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=1)
    killed = _trainer(tmp_path / "b", max_epochs=2, callbacks=[ChildRecorder(), ckpt, Kill(4)],
                      enable_checkpointing=True)
    with pytest.raises(Killed):
        killed.fit(_module(controller_steps=3, baseline_decay=0.5), datamodule=NASRLData(TinyImages()))
    assert killed.global_step == 4 and killed.current_epoch == 1  # in the middle of the second epoch
    torch.manual_seed(1234)  # nothing may depend on the process's RNG history
    resumed, cb2 = _module(controller_steps=3, baseline_decay=0.5), ChildRecorder()
    trainer = _trainer(tmp_path / "b", max_epochs=2, callbacks=[cb2])
    trainer.fit(resumed, datamodule=NASRLData(TinyImages()), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert trainer.global_step == 6 and resumed.baseline == straight.baseline
    assert cb2.children_seen == cb.children_seen == 24 and cb2.best == cb.best
    assert [c["step"] for c in resumed.last_children] == [5] * 4
    for a, b in zip(straight.controller.parameters(), resumed.controller.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
