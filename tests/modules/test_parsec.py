"""PARSECModule and its estimator: importance weights, the one-arch-at-a-time weighted gradient, the prior
gradient against enumeration, learning on a toy task, outputs, transfer, DDP agreement and resume."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningDataModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_nas import load_arch
from lightning_nas.modules.parsec import (
    PARSECModule,
    WeightedGradients,
    importance_weights,
    sample_indices,
    score_gradient,
)
from lightning_nas.nn import LayerChoice
from lightning_nas.spaces import DartsCellSpace
from lightning_nas.spaces.base import SearchSpace
from tests.helpers.tiny_space import Scale


# --- test doubles (module level: DDP spawn pickles them) ------------------------------------
class ToySpace(SearchSpace):
    """Inputs ``(n, 3, 1, 1)``; two blocks of {keep, zero, conv}; only keep-keep (or learned convs) classify."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.input_size, self.num_classes = 1, 3
        self.stem = nn.Identity()
        self.features = nn.Sequential(*[
            LayerChoice({"keep": Scale(1.0), "zero": Scale(0.0), "conv": nn.Conv2d(3, 3, 1)}, f"block{i}.op")
            for i in range(2)
        ])
        self.head = nn.Sequential(nn.Flatten(1), nn.Linear(3, 3))
        with torch.no_grad():
            self.head[1].weight.copy_(torch.eye(3))
            self.head[1].bias.zero_()


class ToyData(LightningDataModule):
    """``x = 3 · one_hot(y) + noise``: the keep-keep path classifies perfectly, a zero block cannot."""

    def __init__(self, n: int = 24, batch_size: int = 8, size: int = 1) -> None:
        super().__init__()
        self.n, self.batch_size, self.size = n, batch_size, size

    def _data(self, seed: int) -> TensorDataset:
        g = torch.Generator().manual_seed(seed)
        y = torch.arange(self.n) % 3
        x = 3 * F.one_hot(y, 3).float().view(self.n, 3, 1, 1) + 0.1 * torch.randn(self.n, 3, 1, 1, generator=g)
        return TensorDataset(x.expand(-1, -1, self.size, self.size).contiguous(), y)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self._data(0), batch_size=self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self._data(1), batch_size=self.batch_size)


def fit(model: PARSECModule, data: LightningDataModule, root: Path, epochs: int = 2, **kwargs: Any) -> Trainer:
    trainer = Trainer(max_epochs=epochs, accelerator="cpu", devices=kwargs.pop("devices", 1), logger=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=root,
                      num_sanity_val_steps=0, enable_checkpointing=kwargs.pop("enable_checkpointing", False), **kwargs)
    trainer.fit(model, datamodule=data)
    return trainer


# --- the estimator ------------------------------------------------------------------------
def test_importance_weights_by_hand():
    ll = torch.tensor([-1000.0, -1001.0, -1003.0])  # far below exp's range: normalised in log space
    e = torch.tensor([1.0, torch.e ** -1, torch.e ** -3], dtype=torch.float64)
    torch.testing.assert_close(importance_weights(ll), e / e.sum())


def test_weighted_gradients_one_arch_at_a_time_equal_the_weighted_sum():
    torch.manual_seed(0)
    net = nn.Linear(4, 2)
    x, targets = torch.randn(5, 4), [torch.randn(5, 2) for _ in range(4)]
    lls = [-3.0, -1.0, -7.0, 0.5]  # a new maximum arrives twice, after gradient was accumulated
    acc = WeightedGradients(net.parameters())
    for ll, t in zip(lls, targets):
        (acc.scale(ll) * F.mse_loss(net(x), t)).backward()
    weights = acc.finish()
    streamed = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    w = importance_weights(torch.tensor(lls))
    torch.testing.assert_close(weights, w)
    sum(float(wk) * F.mse_loss(net(x), t) for wk, t in zip(w, targets)).backward()
    for a, p in zip(streamed, net.parameters()):
        torch.testing.assert_close(a, p.grad)


def _enumeration() -> tuple[list[Tensor], Tensor, Tensor]:
    """Two decisions (2 and 3 values), a fixed likelihood p(y | α), and the exact ∇_π log Σ_α p(y|α) p(α|π)."""
    logits = [torch.tensor([0.3, -0.2]), torch.tensor([0.1, 0.5, -0.4])]
    log_lik = torch.tensor([[-2.0, -0.5, -3.0], [-1.0, -4.0, -0.2]])
    pi = [a.clone().requires_grad_(True) for a in logits]
    log_prior = torch.log_softmax(pi[0], 0)[:, None] + torch.log_softmax(pi[1], 0)[None, :]
    torch.logsumexp(log_lik + log_prior, dim=(0, 1)).backward()
    return logits, log_lik, torch.cat([p.grad for p in pi]).double()


def _estimate(logits: list[Tensor], log_lik: Tensor, k: int, seed: int, normalise: bool = True) -> Tensor:
    idx = sample_indices(logits, k, torch.Generator().manual_seed(seed))
    ll = log_lik[idx[:, 0], idx[:, 1]]
    weights = importance_weights(ll) if normalise else ll.double().exp() / k
    return torch.cat(score_gradient(logits, idx, weights))


def test_prior_gradient_against_enumeration():
    """What is exactly true, tested as such.

    1. The unnormalised estimator ``(1/K) Σ_k p(y|α_k) ∇ log p(α_k|π)`` is unbiased for ``∇_π p(y|π)``
       (averaged over 4000 seeded draws of K = 4 it matches enumeration within Monte Carlo error).
    2. The self-normalised estimator PARSEC uses (weights ``softmax(ℓ)``) is biased for finite K but
       consistent: its error against the exact ``∇_π log p(y|π)`` shrinks as K grows, and at K = 20000
       it matches within 0.02.
    """
    logits, log_lik, exact_log = _enumeration()
    pi = [a.clone().requires_grad_(True) for a in logits]
    log_prior = torch.log_softmax(pi[0], 0)[:, None] + torch.log_softmax(pi[1], 0)[None, :]
    (log_lik.exp() * log_prior.exp()).sum().backward()
    exact = torch.cat([p.grad for p in pi]).double()
    mean = torch.stack([_estimate(logits, log_lik, 4, s, normalise=False) for s in range(4000)]).mean(0)
    torch.testing.assert_close(mean, exact, atol=0.01, rtol=0)
    errors = {k: torch.stack([(_estimate(logits, log_lik, k, s) - exact_log).abs().max() for s in range(50)]).mean()
              for k in (2, 20, 500)}
    assert errors[2] > errors[20] > errors[500]
    torch.testing.assert_close(_estimate(logits, log_lik, 20000, 0), exact_log, atol=0.02, rtol=0)


# --- the module ---------------------------------------------------------------------------
def test_prior_concentrates_on_the_op_that_fits(tmp_path):
    model = PARSECModule(ToySpace(), K=4, lr=0.0, lr_min=0.0, prior_lr=0.2, prior_weight_decay=0.0, seed=1)
    fit(model, ToyData(), tmp_path, epochs=6)
    probs = model.arch_probabilities()
    assert model.arch_steps == 18
    for name in ("block0.op", "block1.op"):
        assert probs[name]["keep"] > 0.8 and probs[name]["zero"] < 0.05
    assert model.argmax_arch() == {"block0.op": "keep", "block1.op": "keep"}
    prior = json.loads((tmp_path / "prior.json").read_text())
    assert prior["probabilities"]["block0.op"]["keep"] == pytest.approx(probs["block0.op"]["keep"])
    assert load_arch(tmp_path / "best_arch.json", model.space) == model.argmax_arch()


def test_best_of_samples_scores_on_the_validation_split(tmp_path):
    model = PARSECModule(ToySpace(), K=2, prior_lr=0.0, final="best_of_samples", final_samples=6)
    fit(model, ToyData(), tmp_path, epochs=1)
    doc = json.loads((tmp_path / "best_arch.json").read_text())
    assert len(doc["sample_scores"]) == 6 and doc["val_acc"] == max(doc["sample_scores"])
    assert doc["final"] == "best_of_samples"


def test_prior_init_transfers_and_checks_decisions(tmp_path):
    source = PARSECModule(ToySpace())
    with torch.no_grad():
        source.prior_logits[0].copy_(torch.tensor([2.0, 0.0, -1.0]))
    path = source.save_prior(tmp_path / "prior.json")
    target = PARSECModule(ToySpace(), prior_init=str(path))
    assert torch.equal(target.prior_logits[0].detach(), source.prior_logits[0].detach())
    doc = json.loads(path.read_text())
    doc["logits"]["block9.op"] = doc["logits"].pop("block1.op")
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"missing \['block1.op'\], unknown \['block9.op'\]"):
        PARSECModule(ToySpace(), prior_init=str(path))
    with pytest.raises(FileNotFoundError, match="run `lightning-nas fit --config recipes/parsec/cifar10.yaml` first"):
        PARSECModule(ToySpace(), prior_init=str(tmp_path / "nope.json"))


def test_prior_from_a_shared_weights_space_transfers_to_per_edge_weights(tmp_path):
    """The weight layout changes no decision: a prior searched with ``op_weights="shared"`` starts a per-edge run."""
    def darts(**kwargs: Any) -> DartsCellSpace:
        return DartsCellSpace(num_classes=3, input_size=8, init_channels=4, layers=3, **kwargs)

    source = PARSECModule(darts(op_weights="shared"))
    with torch.no_grad():
        for i, a in enumerate(source.prior_logits):
            a.copy_(torch.linspace(-1.0, 1.0, len(a)) * (i % 3))
    path = source.save_prior(tmp_path / "prior.json")
    target = PARSECModule(darts(), prior_init=str(path))
    assert target.space.op_weights == "per_edge"
    for a, b in zip(source.prior_logits, target.prior_logits):
        assert torch.equal(a.detach(), b.detach())
    assert target.argmax_arch() == source.argmax_arch()


def test_bad_arguments():
    with pytest.raises(ValueError, match="final"):
        PARSECModule(ToySpace(), final="mode")
    with pytest.raises(ValueError, match="K >= 1"):
        PARSECModule(ToySpace(), K=0)
    with pytest.raises(TypeError):
        PARSECModule(nn.Linear(2, 2))


class StopAfter(Callback):
    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_train_epoch_end(self, trainer: Trainer, pl_module: PARSECModule) -> None:
        trainer.should_stop = trainer.current_epoch + 1 >= self.epochs


def test_resume_continues_the_prior(tmp_path):
    data = ToyData()
    straight = PARSECModule(ToySpace(), K=3, prior_lr=0.05, prior_update_every=2, seed=4)
    fit(straight, data, tmp_path / "a", epochs=3)
    first = PARSECModule(ToySpace(), K=3, prior_lr=0.05, prior_update_every=2, seed=4)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    fit(first, data, tmp_path / "b", epochs=3, callbacks=[StopAfter(2), ckpt], enable_checkpointing=True)
    state = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert state["parsec"]["arch_steps"] == first.arch_steps > 0
    resumed = PARSECModule(ToySpace(), K=3, prior_lr=0.05, prior_update_every=2, seed=4)
    trainer = Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path / "c",
                      enable_checkpointing=False)
    trainer.fit(resumed, datamodule=data, ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert resumed.arch_steps == straight.arch_steps
    for a, b in itertools.chain(zip(straight.prior_logits, resumed.prior_logits),
                                zip(straight.space.parameters(), resumed.space.parameters())):
        assert torch.equal(a, b)


class CompareRanks(Callback):
    """Inside each DDP worker: the ranks drew the same archs every step and hold the same π and weights."""

    def __init__(self, out: str) -> None:
        self.out, self.drawn = out, []

    def on_train_batch_end(self, trainer: Trainer, pl_module: PARSECModule, *args: Any) -> None:
        self.drawn.append(pl_module.last_indices.clone())

    def on_train_end(self, trainer: Trainer, pl_module: PARSECModule) -> None:
        drawn = torch.stack(self.drawn).to(pl_module.device)
        prior = torch.cat([a.detach() for a in pl_module.prior_logits])
        weights = torch.cat([p.detach().flatten() for p in pl_module.space.parameters()])
        for value in (drawn, prior, weights):
            gathered = pl_module.all_gather(value)
            assert torch.equal(gathered[0], gathered[1])
        assert pl_module.arch_steps > 0 and prior.abs().sum() > 0
        if trainer.is_global_zero:
            Path(self.out).write_text(json.dumps({"arch_steps": pl_module.arch_steps}))


@pytest.mark.slow
def test_ddp_ranks_draw_the_same_archs_and_keep_identical_prior_and_weights(tmp_path):
    model = PARSECModule(ToySpace(), K=3, prior_lr=0.05)
    out = tmp_path / "ranks.json"
    fit(model, ToyData(n=16, batch_size=4), tmp_path, epochs=1, devices=2,
        strategy="ddp_spawn_find_unused_parameters_true", callbacks=[CompareRanks(str(out))])
    assert json.loads(out.read_text())["arch_steps"] == 2
