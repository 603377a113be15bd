"""``ProxylessModule``: ProxylessNAS, binary-gate (or REINFORCE) search of a supernet's op choices.

Cai, Zhu, Han, "ProxylessNAS: Direct Neural Architecture Search on Target Task and Hardware", ICLR 2019,
https://arxiv.org/abs/1812.00332 (official code: mit-han-lab/proxylessnas, ``search/``).

Weights and arch logits ``α`` (one vector per op decision, ``α ~ N(0, 1e-3)``) train alternately with
manual optimization: every training batch one weight step (SGD Nesterov) on one path — drawn uniformly
during the warm-up epochs, from ``softmax(α)`` afterwards (``sample_path``, which ``PathSampling`` calls; the
module adds a ``PathSampling(seed=seed)`` when the trainer has none) —
and, from the second epoch after the warm-up, every ``arch_update_every`` batches one arch step (Adam) on
a batch of the held-out validation split. The arch gradient is the binary-gate estimate of
:mod:`lightning_nas.strategies.binary_gates`, written as plain autograd so DDP synchronises it.
At the end of fit the most probable arch is written to ``best_arch.json``.

**Official schedule and estimator** (mit-han-lab/proxylessnas, ``search/``):

- ``search/imagenet_arch_search.py`` runs ``warm_up(warmup_epochs=40)`` (weights only) and then
  ``train()`` for ``n_epochs=120``; ``search/nas_manager.py``, ``ArchSearchRunManager.train``, guards the arch
  updates with ``if epoch > 0`` ("skip architecture parameter updates in the first epoch"): the first joint
  epoch trains weights on paths drawn from ``softmax(α)`` with no arch step. Ours: ``arch_delay_epochs=1``
  (arch steps from epoch ``warmup_epochs + 1``); ``0`` starts them right after the warm-up.
- ``search/imagenet_arch_search.py``: ``--grad_binary_mode`` defaults to ``full_v2`` (choices ``full_v2``,
  ``full``, ``two``; the ``GradientArchSearchConfig`` constructor's own default ``'full'`` is overridden by
  the script). ``full_v2`` (``search/modules/mix_op.py``, ``MixedEdge.forward`` / ``ArchGradientFunction``)
  samples one candidate by ``softmax(α)``, runs it, and in the backward re-runs every other candidate under
  ``no_grad`` to get ``∂L/∂g_j`` for all ``j``; no rescaling after the step (only ``two`` rescales). Ours:
  ``arch_estimator="full"`` (the default) gives the same gradient; it computes the other candidates' outputs
  in the forward (under ``no_grad``, kept for the gate gradient: one output tensor per candidate per block
  more than ``full_v2``'s recomputation), so DDP sees the gradient. ``"two_path"`` (official ``two``) stays
  an option.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback
from torch import Tensor, nn
from typing_extensions import override

from lightning_nas.arch import Arch
from lightning_nas.callbacks.path_sampling import path_sampling_unless_present
from lightning_nas.modules.optim import build_optimizer, split_decay
from lightning_nas.modules.supernet import HeldOutArchSearch
from lightning_nas.nn import inactive_parameters
from lightning_nas.search.output import publish_arch, run_folder
from lightning_nas.spaces.base import SearchSpace
from lightning_nas.strategies.binary_gates import (
    ZERO,
    BinaryGates,
    choices_by_decision,
    latency_loss,
    reinforce_rewards,
    rescale_logits_,
    sample_gates,
    update_baseline,
)
from lightning_nas.strategies.latency_costs import CandidateCosts, cost_target, latency_table_for

ESTIMATORS = ("two_path", "full", "reinforce")


class ProxylessSchedule:
    """Official weight LR: cosine from ``warmup_lr`` over the warm-up, then cosine from ``lr`` to zero."""

    def __init__(self, total: int, warmup: int, warmup_ratio: float) -> None:
        self.total, self.warmup, self.warmup_ratio = max(1, total), warmup, warmup_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return self.warmup_ratio * 0.5 * (1 + math.cos(math.pi * step / self.warmup))
        t = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return 0.5 * (1 + math.cos(math.pi * t))


class ProxylessModule(HeldOutArchSearch):
    """Search a space of op choices with ProxylessNAS.

    Args:
        space: the supernet; every decision must belong to a ``LayerChoice`` (e.g. ``MobileNetSpace``).
        lr: weight LR after the warm-up (official 0.025 at batch 256, cosine).
        warmup_lr: weight LR at the start of the warm-up (official 0.05, cosine over the warm-up);
            ``None``: one cosine from ``lr`` over the whole run.
        momentum: SGD (Nesterov) momentum.
        weight_decay: decay on weight tensors (not BatchNorm/bias, not ``α``).
        label_smoothing: label smoothing of the weight steps' cross-entropy.
        warmup_epochs: epochs of weight-only training on uniformly sampled paths (official 40).
        arch_lr: Adam LR of ``α``.
        arch_betas: Adam betas (official ``(0, 0.999)``: with β1 = 0 an unsampled ``α`` never moves).
        arch_eps: Adam epsilon.
        arch_init_std: standard deviation of the ``α`` initialisation.
        arch_update_every: one arch step after every this many weight steps (official 5).
        arch_delay_epochs: epochs after the warm-up that still have no arch step (official 1: the first
            epoch of the joint phase only trains weights).
        arch_estimator: ``"full"`` (every candidate's gate gradient, official default ``full_v2``),
            ``"two_path"`` (official ``two``: two sampled candidates, rescaled after the step) or
            ``"reinforce"``.
        latency_table: a :class:`~lightning_nas.cost.LatencyTable` JSON for this space (ms); ``{device}`` and
            ``{batch_size}`` in the name are filled in from ``latency_device`` and ``latency_batch_size``, so a
            table measured with other settings never lands in the same file.
        latency_metric: or ``"macs"``: the expected cost from the MACs tables.
        target_latency: the target ``T`` in the cost's unit (ms or MACs).
        loss_type: ``"mul"``: ``latency_alpha · CE · (log E[LAT] / log T) ** latency_beta`` (official
            default; ``latency_alpha`` only scales the loss), or ``"add"``:
            ``CE + latency_lambda · (E[LAT] − T) / T``.
        latency_alpha: scale of the ``mul`` loss (official 0.2).
        latency_beta: exponent of the ``mul`` loss (official 0.3).
        latency_lambda: weight of the ``add`` loss (official 0.1).
        reinforce_samples: archs scored per REINFORCE step (official 10).
        reward_exponent: REINFORCE reward ``acc × (T / LAT) ** reward_exponent`` (official 0.1).
        baseline_decay: REINFORCE baseline ``b ← b + decay · (mean reward − b)`` (official 0.99).
        seed: seed of the arch steps' samples and of the arch batches' order.
        measure_latency: time the exported best arch on CPU at fit end.
        latency_device: when ``latency_table`` names a missing file, measure the table on this device
            (``"cpu"``, ``"cuda"``) at construction and save it there, so recipes run on any machine.
        latency_batch_size: the batch size such a table is measured at.
        target_fraction: instead of ``target_latency``, a target at this fraction of the space's cost range
            (``lo + f · (hi − lo)``), which holds on whatever device measured the table.

    Raises:
        ValueError: an unknown estimator or loss, a cost model without a target (or the reverse), or a target
            below the space's cheapest arch.
        PrerequisiteError: a latency table of another space, batch size or device, or one to measure on CUDA
            without a GPU (one line, naming the command that builds the right table).
        MissingFileError: a missing latency table and no ``latency_device`` to measure it on.
    """

    checkpoint_key = "proxyless"
    arch_role = "arch logits"

    def __init__(
        self, space: SearchSpace, lr: float = 0.025, warmup_lr: float | None = 0.05, momentum: float = 0.9,
        weight_decay: float = 4e-5, label_smoothing: float = 0.1, warmup_epochs: int = 40, arch_lr: float = 1e-3,
        arch_betas: tuple[float, float] = (0.0, 0.999), arch_eps: float = 1e-8, arch_init_std: float = 1e-3,
        arch_update_every: int = 5, arch_delay_epochs: int = 1, arch_estimator: str = "full",
        latency_table: str | None = None,
        latency_metric: str | None = None, target_latency: float | None = None, loss_type: str = "mul",
        latency_alpha: float = 0.2, latency_beta: float = 0.3, latency_lambda: float = 0.1,
        reinforce_samples: int = 10, reward_exponent: float = 0.1, baseline_decay: float = 0.99, seed: int = 0,
        measure_latency: bool = True, latency_device: str | None = None, latency_batch_size: int = 1,
        target_fraction: float | None = None,
    ) -> None:
        super().__init__(space, seed)
        if arch_estimator not in ESTIMATORS:
            raise ValueError(f"arch_estimator must be one of {ESTIMATORS}, got {arch_estimator!r}")
        if loss_type not in ("mul", "add") or arch_update_every < 1 or reinforce_samples < 1 or arch_delay_epochs < 0:
            raise ValueError("ProxylessModule needs loss_type 'mul' or 'add', arch_update_every >= 1, "
                             "reinforce_samples >= 1 and arch_delay_epochs >= 0; got "
                             f"{loss_type!r}, {arch_update_every}, {reinforce_samples}, {arch_delay_epochs}")
        self.save_hyperparameters(ignore=["space"])
        self._choices = choices_by_decision(space)
        self._names = list(self._decisions)
        self.arch_logits = nn.ParameterList(
            [nn.Parameter(torch.randn(len(v)) * arch_init_std) for v in self._decisions.values()]
        )
        self.register_buffer("reinforce_baseline", torch.tensor(float("nan")))
        self._latency_table: Any = None
        self.latency_table_path: str | None = None  # the table file, ``latency_table`` with its fields filled in
        self._costs = self._build_costs(latency_table, latency_metric, target_latency, loss_type)
        if self._costs is not None:
            self.hparams.target_latency = self._target
        self._inactive_cache: dict[tuple[int, int], list[nn.Parameter]] = {}
        self.best_arch_path: Path | None = None
        self.last_samples: dict[str, Any] = {}  # the last arch step's GateSample per decision (for inspection)

    def _build_costs(self, template: str | None, metric: str | None, target: float | None,
                     loss_type: str) -> CandidateCosts | None:
        from lightning_nas.cost import cost_range

        hp = self.hparams
        if template is None and metric is None:
            if target is not None or hp.target_fraction is not None:
                raise ValueError("target_latency needs a cost model: give latency_table=<table.json> or "
                                 "latency_metric='macs'")
            return None
        if template is not None:
            self._latency_table, self.latency_table_path = latency_table_for(self.space, template, hp.latency_device,
                                                                             hp.latency_batch_size)
            costs = CandidateCosts.from_latency_table(self._latency_table, self._decisions)
            lo, hi = self._latency_table.range()
        elif metric == "macs":
            costs = CandidateCosts.from_macs(self.space, self._decisions)
            lo, hi = cost_range(self.space, "macs")
        else:
            raise ValueError(f"latency_metric must be 'macs' (or give latency_table=<table.json>), got {metric!r}")
        self._target = cost_target(lo, hi, costs.unit, target, hp.target_fraction, loss_type)
        return costs

    # --- arch distribution ----------------------------------------------------------------
    def distribution(self) -> nn.ParameterList:
        return self.arch_logits

    def _logits(self) -> dict[str, nn.Parameter]:
        return dict(zip(self._names, self.arch_logits))

    def best_arch(self) -> Arch:
        """The most probable arch: the argmax of ``α`` per decision."""
        return {n: self._decisions[n][int(torch.argmax(a.detach()))] for n, a in self._logits().items()}

    @property
    def searching(self) -> bool:
        """Whether the warm-up is over (paths from ``softmax(α)``, arch steps on)."""
        return self.current_epoch >= self.hparams.warmup_epochs

    @property
    def updating_arch(self) -> bool:
        """Whether this epoch takes arch steps: after the warm-up and the ``arch_delay_epochs`` that follow it."""
        return self.current_epoch >= self.hparams.warmup_epochs + self.hparams.arch_delay_epochs

    def sample_path(self, generator: torch.Generator) -> Arch | None:
        """A path drawn from ``softmax(α)`` with ``generator`` (same on every rank); ``None`` in the warm-up.

        The :mod:`~lightning_nas.strategies.path_policy` method: ``PathSampling`` calls it before every batch.
        """
        if not self.searching:
            return None  # PathSampling then draws a uniform path
        out = {}
        for name, alpha in self._logits().items():
            probs = torch.softmax(alpha.detach().double().cpu(), 0)
            out[name] = self._decisions[name][int(torch.multinomial(probs, 1, generator=generator))]
        return out

    # --- training -------------------------------------------------------------------------
    @override
    def configure_callbacks(self) -> list[Callback]:
        """A ``PathSampling(seed=seed)`` when the trainer has none: it activates each batch's path."""
        return path_sampling_unless_present(self.trainer, self.hparams.seed)

    @override
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        w_opt, _ = self.optimizers()
        x, y = batch
        logits = self.space(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.hparams.label_smoothing)
        w_opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        for p in inactive_parameters(self.space.choice_modules(), self._inactive_cache):
            p.grad = None  # candidates that did not run get no momentum or weight-decay update
        w_opt.step()
        self.lr_schedulers().step()
        acc = (logits.detach().argmax(1) == y).float().mean()
        self.log_dict({"train/loss": loss.detach(), "train/acc": acc}, prog_bar=True, batch_size=len(y))
        if self.updating_arch and (batch_idx + 1) % self.hparams.arch_update_every == 0:
            self._arch_step()

    def _arch_step(self) -> None:
        with self.held_out_step() as ((x, y), gen):
            samples: dict[str, Any] = {}
            if self.hparams.arch_estimator == "reinforce":
                loss, logs = self._reinforce_loss(x, y, gen)
            else:
                loss, logs, samples = self._gate_loss(x, y, gen)
            self.manual_backward(loss)
            for p in self.space.parameters():
                p.grad = None  # an arch step never updates weights
            logits = self._logits()
            skipped = {n for n, s in samples.items() if self._decisions[n][s.active] == ZERO}
            for name in skipped:
                logits[name].grad = None  # official: a sampled zero op gives its α no update
            old = {n: logits[n].detach()[list(s.involved)].clone() for n, s in samples.items()}
        if self.hparams.arch_estimator == "two_path":  # after the step
            for name, sample in samples.items():
                if name not in skipped and len(sample.involved) > 1:
                    rescale_logits_(logits[name], sample.involved, old[name])
        self.last_samples = samples
        self.log_dict({"arch/loss": loss.detach(), **logs}, batch_size=len(y))

    def _gate_loss(self, x: Tensor, y: Tensor, gen: torch.Generator) -> tuple[Tensor, dict[str, Any], dict]:
        logits = self._logits()
        mode = self.hparams.arch_estimator
        samples = {n: sample_gates(torch.softmax(a.detach(), 0), mode, gen) for n, a in logits.items()}
        with BinaryGates(self._choices, logits, samples):
            ce = F.cross_entropy(self.space(x), y)
        logs: dict[str, Any] = {"arch/ce": ce.detach()}
        if self._costs is None:
            return ce, logs, samples
        probs = {}
        for name, sample in samples.items():
            index = list(sample.involved)  # two-path: renormalised over the pair, as the official code
            probs[name] = (torch.softmax(logits[name][index], 0), index)
        expected = self._costs.expected(probs)
        hp = self.hparams
        loss = latency_loss(ce, expected, hp.target_latency, hp.loss_type, hp.latency_alpha, hp.latency_beta,
                            hp.latency_lambda)
        logs["arch/expected_cost"] = expected.detach()
        return loss, logs, samples

    def _reinforce_loss(self, x: Tensor, y: Tensor, gen: torch.Generator) -> tuple[Tensor, dict[str, Any]]:
        hp = self.hparams
        probs = [torch.softmax(a, 0) for a in self.arch_logits]
        correct, log_probs, costs = [], [], []
        for _ in range(hp.reinforce_samples):
            index = [int(torch.multinomial(p.detach().double().cpu(), 1, generator=gen)) for p in probs]
            arch = {n: self._decisions[n][i] for n, i in zip(self._names, index)}
            self.space.activate(arch, validate=False)
            with torch.no_grad():
                correct.append((self.space(x).argmax(1) == y).sum().float())
            log_probs.append(torch.stack([torch.log(p[i]) for p, i in zip(probs, index)]).sum())
            if self._costs is not None:
                costs.append(self._costs.of(arch, self._decisions))
        counts = torch.stack(correct)
        total = torch.tensor(float(len(y)), device=counts.device)
        # each rank scores its own shard of the arch batch: summing makes the rewards identical on all ranks
        acc = self.global_sum(counts) / self.global_sum(total)
        cost = torch.tensor(costs, device=acc.device) if costs else None
        rewards = reinforce_rewards(acc, cost, hp.target_latency, hp.reward_exponent)
        baseline = update_baseline(float(self.reinforce_baseline), float(rewards.mean()), hp.baseline_decay)
        self.reinforce_baseline.fill_(baseline)
        loss = -((rewards - baseline).detach() * torch.stack(log_probs)).mean()
        return loss, {"arch/reward": rewards.mean(), "arch/baseline": baseline}

    # --- validation on the most probable arch ---------------------------------------------
    def validation_arch(self) -> Arch:
        return self.best_arch()

    # --- optimisation ---------------------------------------------------------------------
    @override
    def configure_optimizers(self) -> Any:
        hp = self.hparams
        weights = build_optimizer(split_decay(self.space, hp.weight_decay), "sgd", hp.lr, hp.momentum, nesterov=True)
        arch = torch.optim.Adam(self.arch_logits.parameters(), lr=hp.arch_lr, betas=tuple(hp.arch_betas),
                                eps=hp.arch_eps, weight_decay=0.0)
        total = int(self.trainer.estimated_stepping_batches)
        warm = self.epochs_to_steps(min(hp.warmup_epochs, self.fit_epochs())) if hp.warmup_lr is not None else 0
        ratio = hp.warmup_lr / hp.lr if hp.warmup_lr is not None else 1.0
        schedule = torch.optim.lr_scheduler.LambdaLR(weights, ProxylessSchedule(total, warm, ratio))
        return [weights, arch], [{"scheduler": schedule, "interval": "step"}]

    # --- fit end --------------------------------------------------------------------------
    @override
    def on_fit_end(self) -> None:
        root = Path(self.trainer.default_root_dir)
        if not self.trainer.is_global_zero:
            return
        from lightning_nas.cost import macs, measure_ms

        arch = self.best_arch()
        meta: dict[str, Any] = {"macs": macs(self.space, arch), "probabilities": self.arch_probabilities()}
        if self._latency_table is not None:
            meta["predicted_latency_ms"] = self._latency_table.predict(arch)
        if self.hparams.measure_latency:
            table = self._latency_table.meta if self._latency_table else {}
            batch, device = int(table.get("batch_size", 1)), table.get("device", "cpu")
            device = device if device != "cuda" or torch.cuda.is_available() else "cpu"  # comparable where possible
            net = self.space.export(arch).to(device).eval()
            x = torch.randn(batch, self.space.in_channels, self.space.input_size, self.space.input_size, device=device)
            meta["measured_latency_ms"] = measure_ms(lambda: net(x), device)
            meta["measured_on"] = {"device": device, "batch_size": batch}
        self.best_arch_path = publish_arch(arch, self.space, run_folder(root, "proxyless"), root,
                                           data=self.trainer.datamodule, **meta)


__all__ = ["ProxylessModule", "ProxylessSchedule"]
