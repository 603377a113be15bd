"""ClassificationModule: the network it builds, its optimiser groups and schedule, and a short real fit."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, Trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_nas.arch import ArchError, save_arch
from lightning_nas.datamodules import DigitsDataModule
from lightning_nas.modules import ClassificationModule
from lightning_nas.modules.optim import split_decay, warmup_schedule
from lightning_nas.spaces import ShuffleNetSpace

TINY = dict(num_classes=10, input_size=32, width_mult=0.25, stage_depths=(1, 1, 1, 1), head_channels=64)


def test_exactly_one_network_source() -> None:
    with pytest.raises(ValueError, match="exactly one of model, network or arch"):
        ClassificationModule()
    with pytest.raises(ValueError, match="exactly one"):
        ClassificationModule(network="resnet18", model=nn.Linear(2, 2))
    with pytest.raises(ArchError, match="'found.json' does not exist: it is the best_arch.json a search writes"):
        ClassificationModule(arch="found.json")


def test_arch_json_exports_and_reinitialises(tmp_path: Path) -> None:
    space = ShuffleNetSpace(**TINY)
    arch = space.sample(torch.Generator().manual_seed(0))
    path = save_arch(arch, tmp_path / "a.json", space)
    scratch = ClassificationModule(space=space, arch=str(path), init="scratch")
    inherit = ClassificationModule(space=space, arch=str(path), init="inherit")
    assert not any(type(m).__name__ in ("LayerChoice", "DynamicConv2d") for m in scratch.net.modules())
    same = [torch.equal(a, b) for a, b in zip(scratch.net.parameters(), inherit.net.parameters()) if a.ndim > 1]
    assert not all(same), "init='scratch' kept the supernet weights"
    space.eval().activate(arch)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(inherit.eval()(x), space(x), atol=1e-5, rtol=1e-4)


def test_published_arch_by_name_is_built_at_the_data_size() -> None:
    module = ClassificationModule(arch="mobilenet_v2", num_classes=7, input_size=32)
    assert module(torch.randn(1, 3, 32, 32)).shape == (1, 7)


def test_no_weight_decay_on_batchnorm_and_biases() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    net(torch.randn(1, 3, 5, 5))
    decay, no_decay = split_decay(net, 0.1)
    assert {p.ndim for p in decay["params"]} == {2, 4} and decay["weight_decay"] == 0.1
    assert {p.ndim for p in no_decay["params"]} == {1} and no_decay["weight_decay"] == 0.0


def test_warmup_then_cosine() -> None:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_schedule(opt, total_steps=10, warmup_steps=2)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.5) and lrs[1] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:])) and lrs[-1] < 0.1
    with pytest.raises(ValueError, match="lr decay"):
        warmup_schedule(opt, 10, decay="step")


def test_fit_on_digits_learns_and_reports_top1_top5(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = ClassificationModule(space=ShuffleNetSpace(**TINY), arch=str(_arch_file(tmp_path)), lr=0.1,
                                  warmup_epochs=0.5, label_smoothing=0.0)
    trainer = Trainer(accelerator="cpu", max_epochs=3, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    dm = DigitsDataModule(batch_size=64)
    trainer.fit(module, dm)
    result = trainer.test(module, dm, verbose=False)[0]
    assert result["test/acc"] > 0.5  # chance is 0.1
    assert result["test/acc_top5"] >= result["test/acc"]


def _arch_file(tmp_path: Path) -> Path:
    space = ShuffleNetSpace(**TINY)
    return save_arch({k: "shuffle3x3" for k in space.decisions()}, tmp_path / "arch.json", space)


class _AuxNet(nn.Module):
    """A network with DARTS' retraining interface: (logits, aux) in training and a drop_path_prob."""

    def __init__(self) -> None:
        super().__init__()
        self.body, self.aux, self.drop_path_prob = nn.Linear(4, 3), nn.Linear(4, 3), 0.0

    def forward(self, x: torch.Tensor):  # noqa: ANN201
        x = x.flatten(1)
        return (self.body(x), self.aux(x)) if self.training else self.body(x)


class _RecordDropPath(Callback):
    def __init__(self) -> None:
        self.seen: list[float] = []

    def on_train_batch_start(self, trainer: Trainer, pl_module: ClassificationModule, *args: object) -> None:
        if trainer.fit_loop.epoch_loop.batch_idx == 0:  # the module's epoch hook has run
            self.seen.append(pl_module.net.drop_path_prob)


def test_auxiliary_loss_and_drop_path_ramp(tmp_path: Path) -> None:
    module = ClassificationModule(model=_AuxNet(), num_classes=3, aux_weight=0.4, drop_path=0.2,
                                  label_smoothing=0.0)
    x, y = torch.randn(8, 4), torch.randint(3, (8,))
    module.log_dict = lambda *a, **k: None  # no trainer attached
    loss = module.training_step((x, y), 0)
    net = module.net
    expected = F.cross_entropy(net.body(x), y) + 0.4 * F.cross_entropy(net.aux(x), y)
    torch.testing.assert_close(loss, expected)

    record = _RecordDropPath()
    data = DataLoader(TensorDataset(torch.randn(16, 4), torch.randint(3, (16,))), batch_size=8)
    Trainer(accelerator="cpu", max_epochs=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, callbacks=[record], default_root_dir=tmp_path).fit(
        ClassificationModule(model=_AuxNet(), num_classes=3, drop_path=0.2), data)
    assert record.seen == pytest.approx([0.0, 0.05, 0.1, 0.15])


def test_arch_json_builds_the_space_it_records(tmp_path: Path) -> None:
    space = ShuffleNetSpace(**TINY)
    arch = space.sample(torch.Generator().manual_seed(1))
    path = save_arch(arch, tmp_path / "a.json", space)
    module = ClassificationModule(arch=str(path), num_classes=7, input_size=32)  # no space: the file's, 7 classes
    assert module.net.arch == arch and module.net.head[-1].out_features == 7
    with pytest.raises(ArchError, match="searched at input_size=32, but the data set has input_size=64"):
        ClassificationModule(arch=str(path), num_classes=10, input_size=64)


def test_arch_of_other_settings_refused_unless_asked(tmp_path: Path) -> None:
    arch = ShuffleNetSpace(**TINY).sample(torch.Generator().manual_seed(2))
    path = save_arch(arch, tmp_path / "a.json", ShuffleNetSpace(**TINY))
    wider = ShuffleNetSpace(**{**TINY, "width_mult": 0.5})
    with pytest.raises(ArchError, match=r"with width_mult=0.25 \(this space: 0.5\).*allow_settings_change"):
        ClassificationModule(space=wider, arch=str(path))
    with pytest.warns(UserWarning, match="loaded into this space as asked"):
        module = ClassificationModule(space=wider, arch=str(path), allow_settings_change=True)
    assert module.net.arch == arch


def test_arch_file_without_settings_loads_with_a_warning(tmp_path: Path) -> None:
    space = ShuffleNetSpace(**TINY)
    arch = space.sample(torch.Generator().manual_seed(3))
    old = tmp_path / "old.json"  # format 1: the space's name only
    old.write_text(json.dumps({"space": "ShuffleNetSpace", "format": 1, "arch": arch}))
    with pytest.warns(UserWarning, match="does not record its space's settings"):
        assert ClassificationModule(space=space, arch=str(old)).net.arch == arch
    with warnings.catch_warnings(), pytest.raises(ArchError, match="give the space it was searched in"):
        warnings.simplefilter("ignore")
        ClassificationModule(arch=str(old))
