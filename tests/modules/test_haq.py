"""HAQ: action → bits, budget walk, quantizer numerics, episodes that restore the float network, resume."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader

from lightning_nas.cost.hardware import (
    BitFlexibleAccelerator,
    BitOps,
    BitSerialAccelerator,
    LayerProfile,
    ModelSize,
    cost_lookup,
    fit_budget,
    policy_cost,
    profile_layers,
)
from lightning_nas.modules.haq import HAQModule
from lightning_nas.modules.haq_episode import action_to_bits
from lightning_nas.modules.quantized import (
    QuantizedNetwork,
    apply_policy,
    calibrate,
    finetune,
    load_network,
    quant_layers,
    quantize_network,
    top1,
)
from lightning_nas.nn.quantize import quantize_weight
from tests.helpers.tiny_space import TinyDataModule


def _tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8), nn.ReLU(), nn.Conv2d(8, 16, 1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 3))


def _trainer(tmp_path: Path, **kwargs: Any) -> Trainer:
    defaults = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, max_epochs=-1, num_sanity_val_steps=0, default_root_dir=tmp_path)
    return Trainer(**{**defaults, **kwargs})


def _module(**kwargs: Any) -> HAQModule:
    defaults = dict(model=_tiny_net(), num_classes=3, hardware=BitOps(), episodes=4, warmup=2, agent_batch_size=8,
                    hidden=32, calib_batches=2, val_batches=2, compare=False, keep_first_last=False)
    return HAQModule(**{**defaults, **kwargs})


def test_action_to_bits_formula() -> None:
    for a in torch.linspace(0, 1, 101).tolist():
        assert action_to_bits(a) == min(max(round(2 - 0.5 + a * 7), 2), 8)
    assert action_to_bits(0.0) == 2 and action_to_bits(1.0) == 8 and action_to_bits(0.5) == 5
    assert {action_to_bits(a, 3, 6) for a in torch.rand(500).tolist()} == {3, 4, 5, 6}  # equal-width bins


@pytest.mark.parametrize("hardware", [BitOps(), ModelSize(), BitSerialAccelerator("edge"),
                                      BitSerialAccelerator("cloud"), BitFlexibleAccelerator()], ids=lambda h: repr(h))
def test_budget_holds_after_walk_down(hardware: Any) -> None:
    layers = profile_layers(_tiny_net(), torch.randn(2, 3, 16, 16))
    table = cost_lookup(hardware, layers, 8)
    full = policy_cost(table, [(8, 8)] * len(layers))
    rng = random.Random(0)
    for _ in range(300):
        policy = [(rng.randint(2, 8), rng.randint(2, 8)) for _ in layers]
        ratio = rng.uniform(0.3, 1.0)
        fitted = fit_budget(policy, table, ratio * full, 2, hardware.uses_abits)
        assert policy_cost(table, fitted) <= ratio * full
        assert all(2 <= w <= p[0] and 2 <= a <= p[1] for (w, a), p in zip(fitted, policy))
        if policy_cost(table, policy) <= ratio * full:
            assert fitted == policy  # nothing lowered when it already fits


def test_walk_down_goes_last_to_first_activation_first() -> None:
    layer = LayerProfile("l", "conv", 1, 1, 1, 1, 1, 1, 1, 1, 1.0)
    table = cost_lookup(BitOps(), [layer, layer], 8)
    assert fit_budget([(8, 8), (8, 8)], table, 64 + 56, 2) == [(8, 8), (8, 7)]
    assert fit_budget([(8, 8), (8, 8)], table, 64 + 49, 2) == [(8, 8), (7, 7)]


def test_walk_down_never_lowers_pinned_layers() -> None:
    layer = LayerProfile("l", "conv", 1, 1, 1, 1, 1, 1, 1, 1, 1.0)
    table = cost_lookup(BitOps(), [layer] * 3, 8)
    fitted = fit_budget([(8, 8)] * 3, table, 64 + 2 * 4, 2, pinned=(0, 2))
    assert fitted == [(8, 8), (2, 2), (8, 8)]  # over budget: the free layer bottoms out, the pinned ones stay


def test_first_and_last_layer_kept_at_8_bits(tmp_path: Path) -> None:
    """The official environment's ``_keep_first_last_layer``: whatever the agent picks, the first and last layer
    run at 8/8 bits, except the first layer's input, which is not quantized (official ``a_bit = -1``; priced at
    8 bits); the walk-down lowers only the others, and the budget still holds."""
    module = _module(episodes=6, warmup=3, keep_first_last=True, budget_ratio=0.9)
    trainer = _trainer(tmp_path)
    trainer.fit(module, TinyDataModule())
    assert module.pinned == (0, 3)
    doc = json.loads((tmp_path / "best_policy.json").read_text())
    bits = [(v["wbits"], v["abits"]) for v in doc["layers"].values()]
    assert bits[0] == (8, 32) and bits[-1] == (8, 8) and doc["cost_ratio"] <= 0.9
    priced = [tuple(p) for p in module.best["policy"]]
    assert priced[0] == (8, 8) and doc["cost"] == pytest.approx(policy_cost(module.cost_table, priced))
    assert module.pin([(3, 4)] * 4) == [(8, 8), (3, 4), (3, 4), (8, 8)]
    seen: list[int] = []
    first = quant_layers(module.net)["0"]
    handle = first.register_forward_pre_hook(lambda m, _: seen.append(m.abits))
    module.evaluate(module.pin([(3, 4)] * 4))
    handle.remove()
    assert seen and set(seen) == {32}  # calibration, fine-tune and scoring all see the float image
    with pytest.raises(ValueError, match="keep_first_last"):  # 8-bit first conv alone is 0.82 of the cost
        _trainer(tmp_path).fit(_module(keep_first_last=True, budget_ratio=0.5), TinyDataModule())


class _FixedTiny(TinyDataModule):
    """TinyDataModule with a fixed-order calibration loader, as the real datamodules have."""

    def calibration_dataloader(self, num_batches: int | None = None) -> DataLoader:
        return DataLoader(self._data(self.n_train, 0), batch_size=self.batch_size)


def test_official_scoring_is_the_default() -> None:
    hp = HAQModule(model=_tiny_net(), num_classes=3).hparams
    assert (hp.quantizer, hp.calib_batches, hp.finetune_batches, hp.finetune_lr, hp.finetune_weight_decay,
            hp.reward_split) == ("haq", 1, "epoch", 1e-3, 4e-5, "finetune")
    with pytest.raises(ValueError, match="finetune_batches=0"):
        HAQModule(model=_tiny_net(), finetune_batches=0)
    with pytest.raises(ValueError, match="quantizer"):
        HAQModule(model=_tiny_net(), quantizer="kmeans")
    HAQModule(model=_tiny_net(), finetune_batches=0, reward_split="val")  # scoring without a fine-tune: allowed


def test_reward_is_the_finetune_accuracy_against_float_on_the_same_batches(tmp_path: Path) -> None:
    """Official: the reward's accuracy is the running top-1 of the one-epoch fine-tune, and ``org_acc`` is the
    float network's eval-mode top-1 on the same (training) batches, not on the validation split."""
    dm = _FixedTiny(n_val=16)  # float accuracy 0.41 on the training batches, 0.44 on these
    module = HAQModule(model=_tiny_net(), num_classes=3, hardware=BitOps(), episodes=3, warmup=2, agent_batch_size=8,
                       hidden=32, val_batches=2, compare=False, keep_first_last=False)
    trainer = _trainer(tmp_path)
    trainer.fit(module, dm)
    train = list(dm.calibration_dataloader())
    cpu = torch.device("cpu")
    assert module.acc_float == top1(module.net, train, cpu)
    assert module.acc_float != top1(module.net, list(dm.val_dataloader()), cpu)
    policy = [(3, 4)] * 4
    acc, specs = module.evaluate(policy)
    net = copy.deepcopy(module.net)
    for layer in quant_layers(net).values():
        layer.wbits, layer.abits = 3, 4
    calibrate(net, train[:1], cpu)
    assert acc == finetune(net, train, 1e-3, 4e-5, cpu)  # one pass over every training batch
    assert specs["0"]["w_range"] > 0 and specs["0"]["quantizer"] == "haq"
    best = module.best
    assert best["reward"] == pytest.approx(0.1 * 100 * (best["acc"] - module.acc_float))
    assert trainer.progress_bar_metrics["haq/finetune_s"] > 0  # the fine-tune's cost, each episode


def test_reward_split_val_scores_held_out_after_the_finetune(tmp_path: Path) -> None:
    dm = _FixedTiny()
    module = _module(episodes=2, finetune_batches=2, reward_split="val", quantizer="ema")
    _trainer(tmp_path).fit(module, dm)
    val = list(dm.val_dataloader())[:2]
    cpu = torch.device("cpu")
    assert module.acc_float == top1(module.net, val, cpu)
    acc, _ = module.evaluate([(4, 4)] * 4)
    net = copy.deepcopy(module.net)
    for layer in quant_layers(net).values():
        layer.wbits, layer.abits = 4, 4
    train = list(dm.calibration_dataloader())
    calibrate(net, train[:2], cpu)
    finetune(net, train[:2], 1e-3, 4e-5, cpu)
    assert acc == top1(net, val, cpu)


def test_cost_models_shapes_and_monotonicity() -> None:
    layers = profile_layers(_tiny_net(), torch.randn(1, 3, 16, 16))
    assert [p.kind for p in layers] == ["conv", "conv", "conv", "linear"] and layers[1].depthwise
    assert layers[0].act_signed and not layers[2].act_signed and layers[1].in_hw == 256 and layers[2].in_hw == 64
    assert layers[0].macs == 3 * 8 * 9 * 256
    for hw in (BitOps(), BitSerialAccelerator(), BitFlexibleAccelerator()):
        for p in layers:
            assert hw.layer_cost(p, 4, 4) <= hw.layer_cost(p, 8, 8)
    assert BitFlexibleAccelerator().layer_cost(layers[0], 3, 3) == BitFlexibleAccelerator().layer_cost(layers[0], 4, 4)
    assert ModelSize().layer_cost(layers[3], 4, 2) == 16 * 3 * 4


def test_quantizer_numerics() -> None:
    w = torch.randn(16, 8, 3, 3, generator=torch.Generator().manual_seed(0))
    errors = [float((quantize_weight(w, b) - w).abs().mean()) for b in (2, 4, 8)]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.01 * float(w.abs().mean())
    assert torch.equal(quantize_weight(w, 32), w)


def test_quantize_network_wraps_every_layer_and_keeps_output() -> None:
    net = _tiny_net().eval()
    qnet = quantize_network(net).eval()
    assert len(quant_layers(qnet)) == 4 and not quant_layers(net)
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(net(x), qnet(x))
    with pytest.raises(Exception, match="unknown layers"):
        apply_policy(qnet, {"nope": (4, 4)})


def test_episode_restores_float_weights(tmp_path: Path) -> None:
    module = _module(episodes=3, finetune_batches=2, finetune_lr=0.5)
    trainer = _trainer(tmp_path)
    trainer.fit(module, TinyDataModule())
    before = {k: v.clone() for k, v in module.net.state_dict().items()}
    assert module.episode == 3 and trainer.global_step == 3
    acc, _ = module.evaluate([(2, 2)] * len(module.layers))
    after = module.net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(q.wbits == 32 and q.abits == 32 for q in quant_layers(module.net).values())
    assert module.best is not None and 0 <= acc <= 1
    doc = json.loads((tmp_path / "best_policy.json").read_text())
    assert set(doc["layers"]) == {"0", "3", "5", "9"} and doc["cost_ratio"] <= 0.5
    assert all(2 <= v["wbits"] <= 8 and 2 <= v["abits"] <= 8 for v in doc["layers"].values())
    qnet = QuantizedNetwork(str(tmp_path / "best_policy.json"), model=_tiny_net())
    for name, layer in quant_layers(qnet.net).items():
        spec = doc["layers"][name]
        assert (layer.wbits, layer.abits, layer.act_signed) == (spec["wbits"], spec["abits"], spec["act_signed"])
        assert float(layer.act_max) == pytest.approx(spec["act_max"])
    assert qnet.eval()(torch.randn(2, 3, 8, 8)).shape == (2, 3)


def test_resume_continues_agent_buffer_and_episode(tmp_path: Path) -> None:
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=1)
    first = _module(episodes=3)
    _trainer(tmp_path, callbacks=[ckpt], enable_checkpointing=True).fit(first, TinyDataModule())
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert saved["haq"]["episode"] == 3
    resumed = _module(episodes=5)
    trainer = _trainer(tmp_path)
    trainer.fit(resumed, TinyDataModule(), ckpt_path=str(tmp_path / "last.ckpt"))
    assert resumed.episode == 5 and trainer.global_step == 5
    assert len(resumed.agent.buffer) == 5 * 2 * 4

    again = _module(episodes=3)  # already done: restores and stops without another episode
    _trainer(tmp_path).fit(again, TinyDataModule(), ckpt_path=str(tmp_path / "last.ckpt"))
    assert again.episode == 3 and again.best == saved["haq"]["best"]
    for key in ("actor", "critic_target"):
        for name, value in saved["haq"]["agent"][key].items():
            assert torch.equal(again.agent.state_dict()[key][name], value)
    state = torch.rand(10, generator=torch.Generator().manual_seed(0))
    first.agent.generator.set_state(saved["haq"]["agent"]["generator"])
    assert torch.equal(first.agent.act(state, 3), again.agent.act(state, 3))


def test_missing_files_and_untrained_guard(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.ckpt.*lightning-nas fit"):
        load_network(checkpoint=str(tmp_path / "missing.ckpt"))
    with pytest.raises(FileNotFoundError, match="w.pth.*torch.save"):
        load_network(network="resnet18", weights=str(tmp_path / "w.pth"))
    with pytest.raises(ValueError, match="allow_untrained"):
        load_network(network="resnet18")
    with pytest.raises(FileNotFoundError, match="policy.json.*recipes/haq/cifar10.yaml"):
        QuantizedNetwork(policy=str(tmp_path / "policy.json"), network="resnet18", allow_untrained=True)


def test_progress_and_global_step_count_episodes(tmp_path: Path) -> None:
    """Lightning's own counter counts episodes (the episode clock), the bar shows the episode, and a run spanning
    several passes over the loader stops after ``episodes`` with the trainer's settings left as configured."""
    from lightning.pytorch.callbacks import TQDMProgressBar

    bar = TQDMProgressBar()
    trainer = _trainer(tmp_path, enable_progress_bar=True, callbacks=[bar])
    module = _module(episodes=7)
    trainer.fit(module, datamodule=TinyDataModule(n_train=24, batch_size=8))  # 3 batches an epoch
    assert trainer.num_training_batches == 3 and trainer.max_epochs == -1
    assert module.episode == 7 and trainer.global_step == 7
    assert trainer.progress_bar_metrics["haq/episode"] == 7


def test_max_steps_and_step_checkpoints_count_episodes(tmp_path: Path) -> None:
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_top_k=-1,
                           filename="{step}")
    trainer = _trainer(tmp_path, max_steps=5, callbacks=[ckpt], enable_checkpointing=True)
    module = _module(episodes=10)
    trainer.fit(module, datamodule=TinyDataModule(n_train=24, batch_size=8))
    assert module.episode == 5 and trainer.global_step == 5
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["step=2.ckpt", "step=4.ckpt"]
    assert torch.load(tmp_path / "ckpt" / "step=4.ckpt", weights_only=True)["haq"]["episode"] == 4
