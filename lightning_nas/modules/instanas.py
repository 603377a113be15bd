"""``InstaNASModule``: instance-aware NAS, a controller picking a sub-network of the meta-graph per input.

Cheng et al., "InstaNAS: Instance-aware Neural Architecture Search", AAAI 2020,
https://arxiv.org/abs/1811.10201 (official code: AnjieCheng/InstaNAS).

Three stages, by epoch (``pretrain_epochs``, ``search_epochs``, ``finetune_epochs``), manual optimization:

1. **pre-training** of the meta-graph with random drop-path: the first half every option on; in the second
   half each option kept with a probability falling linearly from 1 to ``final_keep_prob`` (0.5);
2. **search**: controller epochs and meta-graph epochs in turn (the ``AlternatingEpochs`` callback; the module
   adds one with its defaults in ``configure_callbacks`` when the trainer has none). A
   controller epoch (Adam, lr 5e-4) scores the sampled and the greedy policy of each input on the frozen
   meta-graph (eval mode) and takes a self-critical policy-gradient step on ``R = R_T · R_A`` with an
   entropy bonus (``entropy``: official ``−p′ log p′`` by default, see ``controllers/instanas_policy.py``);
   the latency window's upper bound falls linearly from ``0.7 L_max`` to ``0.5 L_mbv2`` over the stage. A
   meta-graph epoch trains on policies sampled from the frozen controller and permuted across the batch
   (the official trick: each input meets many sub-networks);
3. **fine-tuning** of the meta-graph on the controller's greedy policies (what inference runs).

The search's meta-graph optimiser is the official one (``search/search.py``: ``optim.SGD(instanet.parameters(),
lr=net_lr, weight_decay=wd)``, no momentum; the README's CIFAR command sets ``--lr 5e-4`` and no ``--net_lr``,
so ``net_lr = lr = 5e-4``, and ``--wd`` defaults to 0; ImageNet: ``--net_lr 0.01``): ``search_lr`` 5e-4,
``search_momentum`` 0, ``search_weight_decay`` 0, constant. Pre-training and fine-tuning use ``lr``/``finetune_lr``
with ``momentum`` and ``weight_decay`` (one SGD; its groups are re-set at each step for the stage, and a stage
with another momentum starts without the last stage's momentum buffers, as a fresh official script would). The
official CIFAR search is also far longer: 501 rounds of one controller and one meta-graph epoch (``--max_epochs
500``, batch 32), where our recipes spend ``search_epochs`` on both together.

Execution: validation, inference and the controller's scoring run **grouped** (each option only on the
inputs that use it: real instance-aware speed; in eval mode the same function as masked). The meta-graph
trains **masked** by default (``train_execution="masked"``, as the official code: every option on the whole
batch, multiplied by its 0/1 column, so each option's BatchNorm normalises over the whole batch).
``train_execution="grouped"`` (our variant) trains each option only on the inputs routed to it: its
BatchNorm statistics then come from the inputs it really serves at inference, and a step costs what the
policies cost instead of every option on every input.

Latencies come from an :class:`~lightning_nas.cost.option_latency.OptionLatency` table timed on the CPU at
start-up (rank 0, broadcast; cached in ``latency_cache`` when given, and kept in checkpoints).
At the end of fit rank 0 writes ``instanas_summary.json`` (accuracy vs mean latency on the validation
split), ``instanas_latency_hist.png``, ``instanas_option_usage.png`` and ``instanas_easy_hard.png``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import Tensor
from typing_extensions import override

from lightning_nas.callbacks.alternating_epochs import AlternatingEpochs
from lightning_nas.controllers.instanas_policy import (
    ENTROPIES,
    InstaNASPolicy,
    encourage,
    greedy_policy,
    latency_bounds,
    policy_loss,
    rewards,
    sample_policy,
)
from lightning_nas.cost.option_latency import OptionLatency
from lightning_nas.modules.instanas_report import ValidationRecord, write_report
from lightning_nas.modules.optim import split_decay
from lightning_nas.modules.supernet import check_space_checkpoint, write_space_checkpoint
from lightning_nas.seeding import step_generator
from lightning_nas.spaces.instanas import InstaNASSpace
from lightning_nas.spaces.instanas_cell import EXECUTIONS


class InstaNASModule(LightningModule):
    """Search an :class:`~lightning_nas.spaces.instanas.InstaNASSpace` with an instance-aware controller.

    Args:
        space: the meta-graph.
        controller: the policy network (default: an ``InstaNASPolicy`` sized for the space).
        pretrain_epochs: stage 1 length.
        search_epochs: stage 2 length (controller and meta-graph epochs alternate).
        finetune_epochs: stage 3 length.
        lr: meta-graph SGD lr of pre-training (cosine to 0 over the stage).
        search_lr: meta-graph lr in the search's meta-graph epochs (constant; official CIFAR 5e-4).
        finetune_lr: meta-graph lr of fine-tuning (cosine to 0 over the stage).
        momentum: SGD momentum of pre-training and fine-tuning.
        weight_decay: decay of the meta-graph's conv/linear weights in pre-training and fine-tuning.
        search_momentum: SGD momentum in the search's meta-graph epochs (official 0).
        search_weight_decay: conv/linear weight decay in the search's meta-graph epochs (official 0).
        label_smoothing: cross-entropy label smoothing.
        controller_lr: Adam lr of the controller (official 5e-4).
        alpha: encouragement ``p′ = α p + (1 − α)(1 − p)``.
        entropy_weight: β of the entropy bonus (official 0.8).
        entropy: ``"plogp"`` (official ``Σ −p′ log p′``) or ``"bernoulli"`` (full Bernoulli entropy).
        correct_reward: ``R_A`` of a correct prediction (official 30).
        wrong_reward: the reward of a wrong prediction (official 0).
        final_keep_prob: drop-path keep probability at the end of pre-training.
        train_execution: ``"masked"`` (official) or ``"grouped"`` meta-graph training (see the module docstring).
        latency_cache: a JSON file for the option latency table: loaded when it matches the space, else
            measured and written (rank 0).
        latency_batch_size: the batch the latencies are timed at.
        latency_repeats: timed calls per option (median kept).
        seed: seed of drop-path masks, policy samples and permutations.
        num_examples: easy and hard validation inputs kept for the fit-end picture.
    """

    def __init__(
        self, space: InstaNASSpace, controller: InstaNASPolicy | None = None, pretrain_epochs: int = 100,
        search_epochs: int = 100, finetune_epochs: int = 50, lr: float = 0.1, search_lr: float = 5e-4,
        finetune_lr: float = 0.01, momentum: float = 0.9, weight_decay: float = 4e-5, search_momentum: float = 0.0,
        search_weight_decay: float = 0.0, label_smoothing: float = 0.0, controller_lr: float = 5e-4,
        alpha: float = 0.8, entropy_weight: float = 0.8, entropy: str = "plogp", correct_reward: float = 30.0,
        wrong_reward: float = 0.0, final_keep_prob: float = 0.5, train_execution: str = "masked",
        latency_cache: str | None = None, latency_batch_size: int = 1, latency_repeats: int = 5, seed: int = 0,
        num_examples: int = 8,
    ) -> None:
        super().__init__()
        if not isinstance(space, InstaNASSpace):
            raise TypeError(f"InstaNASModule needs an InstaNASSpace, got {type(space).__name__}")
        if train_execution not in EXECUTIONS:
            raise ValueError(f"train_execution must be one of {EXECUTIONS}, got {train_execution!r}")
        if entropy not in ENTROPIES:
            raise ValueError(f"entropy must be one of {ENTROPIES}, got {entropy!r}")
        if min(pretrain_epochs, search_epochs, finetune_epochs) < 0 or not 0 < final_keep_prob <= 1:
            raise ValueError("InstaNASModule needs stage lengths >= 0 and 0 < final_keep_prob <= 1")
        self.save_hyperparameters(ignore=["space", "controller"])
        self.automatic_optimization = False
        self.space = space
        self.controller = controller or InstaNASPolicy(space.num_cells, space.num_options, space.input_size)
        if (self.controller.num_cells, self.controller.num_options) != (space.num_cells, space.num_options):
            raise ValueError(f"the controller outputs {self.controller.num_cells}×{self.controller.num_options} "
                             f"choices, the space has {space.num_cells}×{space.num_options}")
        self.phase = "pretrain"
        self.latency: OptionLatency | None = None
        self.controller_steps = self.supernet_steps = 0
        self.batch_step = 0  # training batches run so far, over all epochs (saved): seeds each batch's draws
        self.record = ValidationRecord(num_examples)
        self.report: dict[str, Any] = {}

    # --- stages ---------------------------------------------------------------------------
    def stage_of(self, epoch: int) -> str:
        """``"pretrain"``, ``"search"`` or ``"finetune"`` for a (0-based) epoch."""
        hp = self.hparams
        if epoch < hp.pretrain_epochs:
            return "pretrain"
        return "search" if epoch < hp.pretrain_epochs + hp.search_epochs else "finetune"

    def _epoch_progress(self, batch_idx: int) -> float:
        """Fractional epoch: the current epoch plus the share of its batches done."""
        n = self.trainer.num_training_batches
        frac = batch_idx / n if isinstance(n, int) and n > 0 else 0.0
        return self.current_epoch + frac

    def bounds(self, epoch: float | None = None) -> tuple[float, float]:
        """The latency window ``(UB, LB)`` at a (fractional) epoch of the search stage."""
        hp, table = self.hparams, self._table()
        epoch = self.current_epoch if epoch is None else epoch
        progress = (epoch - hp.pretrain_epochs) / max(1, hp.search_epochs)
        return latency_bounds(progress, table.max_ms, table.mbv2_ms, table.min_ms)

    # --- setup: the latency table ---------------------------------------------------------
    @override
    def setup(self, stage: str) -> None:
        if self.latency is not None:
            return
        table = self._measure_or_load() if self.trainer.is_global_zero else None
        # every rank must score policies with the same table, or their rewards (and gradients) disagree
        state = self.trainer.strategy.broadcast(table.state_dict() if table is not None else None, src=0)
        self.latency = OptionLatency.from_state_dict(state)

    def _measure_or_load(self) -> OptionLatency:
        hp = self.hparams
        cache = Path(hp.latency_cache) if hp.latency_cache else None
        if cache is not None and cache.exists():
            table = OptionLatency.load(cache)
            if table.matches(self.space, hp.latency_batch_size):
                return table
        quick = bool(self.trainer.fast_dev_run)  # a smoke run: one timed call per option is enough
        table = OptionLatency.build(self.space, hp.latency_batch_size, warmup=1 if quick else 2,
                                    repeats=1 if quick else hp.latency_repeats)
        if cache is not None and not quick:
            table.save(cache)
        return table

    def _table(self) -> OptionLatency:
        if self.latency is None:
            self.latency = OptionLatency.build(self.space, self.hparams.latency_batch_size,
                                               repeats=self.hparams.latency_repeats)
        return self.latency

    # --- policies -------------------------------------------------------------------------
    @torch.no_grad()
    def policy(self, x: Tensor) -> Tensor:
        """The controller's greedy policy for ``x`` (what inference runs)."""
        was = self.controller.training
        self.controller.eval()
        try:
            return greedy_policy(self.controller(x))
        finally:
            self.controller.train(was)

    def forward(self, x: Tensor) -> Tensor:
        """Instance-aware inference: each input runs its own greedy sub-network, grouped."""
        return self.space.forward_policy(x, self.policy(x), "grouped")

    def _generator(self, offset: int = 0) -> torch.Generator:
        # per-rank stream: ranks see different inputs and may draw different policies for them
        seed = self.hparams.seed * 1009 + self.global_rank * 31 + offset
        return step_generator(seed, self.batch_step)

    def _drop_path_policy(self, x: Tensor, batch_idx: int) -> Tensor:
        hp = self.hparams
        half = hp.pretrain_epochs / 2
        progress = min(1.0, max(0.0, (self._epoch_progress(batch_idx) - half) / max(half, 1e-9)))
        keep = 1.0 - (1.0 - hp.final_keep_prob) * progress
        shape = (len(x), self.space.num_cells, self.space.num_options)
        if keep >= 1.0:
            return torch.ones(shape, device=x.device)
        return sample_policy(torch.full(shape, keep, device=x.device), self._generator())

    @torch.no_grad()
    def _supernet_policy(self, x: Tensor, batch_idx: int) -> Tensor:
        if self.phase == "pretrain":
            return self._drop_path_policy(x, batch_idx)
        probs = self.controller(x)
        if self.phase == "finetune":
            return greedy_policy(probs)
        gen = self._generator()
        policy = sample_policy(encourage(probs, self.hparams.alpha), gen)
        return policy[torch.randperm(len(x), generator=gen).to(x.device)]

    # --- training -------------------------------------------------------------------------
    @override
    def configure_callbacks(self) -> list[Any]:
        """``AlternatingEpochs`` (its defaults) when the trainer has none: it sets ``phase`` and freezes a side."""
        if any(isinstance(cb, AlternatingEpochs) for cb in self.trainer.callbacks):
            return []  # the trainer's own, with its settings (a returned one would replace it)
        return [AlternatingEpochs()]

    @override
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        if self.phase == "controller":
            self._controller_step(x, y, batch_idx)
        else:
            self._supernet_step(x, y, batch_idx)
        self.batch_step += 1

    def _supernet_step(self, x: Tensor, y: Tensor, batch_idx: int) -> None:
        optimizer = self.optimizers()[0]
        self._set_supernet_groups(optimizer, batch_idx)
        policy = self._supernet_policy(x, batch_idx)
        logits = self.space.forward_policy(x, policy, self.hparams.train_execution)
        loss = F.cross_entropy(logits, y, label_smoothing=self.hparams.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        optimizer.step()
        self.supernet_steps += 1
        acc = (logits.detach().argmax(1) == y).float().mean()
        latency = self._table().of(policy).mean().item()
        self.log_dict({"train/loss": loss.detach(), "train/acc": acc, "train/latency_ms": latency}, prog_bar=True,
                      batch_size=len(y))

    def _set_supernet_groups(self, optimizer: Any, batch_idx: int) -> None:
        """The stage's lr, momentum and weight decay (the search's SGD is the official plain one)."""
        hp, search = self.hparams, self.phase not in ("pretrain", "finetune")
        momentum = hp.search_momentum if search else hp.momentum
        decay = hp.search_weight_decay if search else hp.weight_decay
        for i, group in enumerate(optimizer.param_groups):
            if group["momentum"] != momentum:  # a new stage starts its SGD afresh (official: a new script)
                for p in group["params"]:
                    optimizer.state.get(p, {}).pop("momentum_buffer", None)
            group["lr"], group["momentum"] = self._supernet_lr(batch_idx), momentum
            group["weight_decay"] = decay if i == 0 else 0.0  # split_decay: group 0 holds the conv/linear weights

    def _supernet_lr(self, batch_idx: int) -> float:
        hp, epoch = self.hparams, self._epoch_progress(batch_idx)
        if self.phase == "pretrain":
            return hp.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, epoch / max(1, hp.pretrain_epochs))))
        if self.phase == "finetune":
            t = (epoch - hp.pretrain_epochs - hp.search_epochs) / max(1, hp.finetune_epochs)
            return hp.finetune_lr * 0.5 * (1 + math.cos(math.pi * min(1.0, max(0.0, t))))
        return hp.search_lr

    def _controller_step(self, x: Tensor, y: Tensor, batch_idx: int) -> None:
        hp, table = self.hparams, self._table()
        optimizer = self.optimizers()[1]
        probs = self.controller(x)
        encouraged = encourage(probs, hp.alpha)
        sampled = sample_policy(encouraged, self._generator())
        greedy = greedy_policy(probs.detach())
        with torch.no_grad():  # the meta-graph is frozen (eval mode): it only scores the two policies
            right_s = self.space.forward_policy(x, sampled).argmax(1) == y
            right_g = self.space.forward_policy(x, greedy).argmax(1) == y
        ub, lb = self.bounds(self._epoch_progress(batch_idx))
        lat_s, lat_g = table.of(sampled), table.of(greedy)
        r_s = rewards(lat_s, right_s.cpu(), ub, lb, hp.correct_reward, hp.wrong_reward)
        r_g = rewards(lat_g, right_g.cpu(), ub, lb, hp.correct_reward, hp.wrong_reward)
        advantage = (r_s - r_g).to(device=probs.device, dtype=probs.dtype)
        loss = policy_loss(encouraged, sampled, advantage, hp.entropy_weight, hp.entropy)
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        optimizer.step()
        self.controller_steps += 1
        self.log_dict({"search/loss": loss.detach(), "search/reward": r_s.mean().item(),
                       "search/acc": right_s.float().mean(), "search/latency_ms": lat_s.mean().item(),
                       "search/greedy_latency_ms": lat_g.mean().item(), "search/ub": ub, "search/lb": lb},
                      prog_bar=True, batch_size=len(y))

    # --- validation: the greedy policy of every input, grouped ----------------------------
    def _val_policy(self, x: Tensor) -> Tensor:
        if self.stage_of(self.current_epoch) == "pretrain" and self.controller_steps == 0:
            return torch.ones(len(x), self.space.num_cells, self.space.num_options, device=x.device)
        return self.policy(x)

    @override
    def on_validation_epoch_start(self) -> None:
        self.record.reset()

    @override
    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        policy = self._val_policy(x)
        logits = self.space.forward_policy(x, policy, "grouped")
        latency = self._table().of(policy)
        correct = logits.argmax(1) == y
        self.record.add(x, latency, correct, policy)
        self.log_dict({"val/loss": F.cross_entropy(logits, y), "val/acc": correct.float().mean(),
                       "val/latency_ms": latency.mean().item()}, batch_size=len(y), sync_dist=True)

    @override
    def on_validation_epoch_end(self) -> None:
        self.record.gather(self)  # a collective: every rank calls it

    # --- optimisation ---------------------------------------------------------------------
    @override
    def configure_optimizers(self) -> Any:
        hp = self.hparams
        supernet = torch.optim.SGD(split_decay(self.space, hp.weight_decay, conv_linear_only=True), lr=hp.lr,
                                   momentum=hp.momentum)
        controller = torch.optim.Adam(self.controller.parameters(), lr=hp.controller_lr)
        return [supernet, controller]

    # --- fit end --------------------------------------------------------------------------
    @override
    def on_fit_end(self) -> None:
        folder = Path(self.trainer.log_dir or self.trainer.default_root_dir)  # log_dir is a collective: all ranks
        if not self.trainer.is_global_zero or not self.record.ready:
            return
        self.report = write_report(folder, self.record, self._table(), self.space.option_names, self.trainer.loggers)

    # --- checkpoints ----------------------------------------------------------------------
    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        write_space_checkpoint(checkpoint, self.space)
        checkpoint["instanas"] = {"controller_steps": self.controller_steps, "supernet_steps": self.supernet_steps,
                                  "batch_step": self.batch_step, "phase": self.phase,
                                  "latency": self.latency.state_dict() if self.latency is not None else None}

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        check_space_checkpoint(self.space, checkpoint)
        state = checkpoint.get("instanas", {})
        self.controller_steps = int(state.get("controller_steps", 0))
        self.supernet_steps = int(state.get("supernet_steps", 0))
        # older checkpoints: every training batch took one controller or one meta-graph step
        self.batch_step = int(state.get("batch_step", self.controller_steps + self.supernet_steps))
        self.phase = state.get("phase", self.phase)
        if state.get("latency") is not None:  # the resumed search keeps scoring with the same table
            self.latency = OptionLatency.from_state_dict(state["latency"])


__all__ = ["InstaNASModule", "ValidationRecord", "write_report"]
