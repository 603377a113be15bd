"""``NASRLModule``: Neural Architecture Search with Reinforcement Learning.

Zoph & Le, "Neural Architecture Search with Reinforcement Learning", ICLR 2017,
https://arxiv.org/abs/1611.01578 (no official code).

One Lightning training step is one controller step: the LSTM controller samples ``children_per_step`` archs,
each child is built and trained from scratch on the children's training split in a nested plain-PyTorch loop,
scored on their held-out validation split, and the rewards drive one REINFORCE update of the controller
(:meth:`NASRLModule.update_controller`: an EMA baseline, Adam through Lightning's manual optimization, so the
module that owns the optimizer steps it). The controller is the only set of parameters Lightning optimizes;
children are local to the step, never submodules.

Where the data comes from: Lightning iterates the training loader of the datamodule it is given, and a NAS-RL
step is not a batch. So the module is fitted with :class:`~lightning_nas.modules.nasrl_data.NASRLData`, a
datamodule whose ``train_dataloader`` serves ``controller_steps`` placeholder items per epoch and which holds the
children's datamodule as ``.data``; the module reads that one only through its public ``train_dataloader`` /
``val_dataloader``. Lightning's own counters then count controller steps (``max_epochs``, ``max_steps``,
checkpoints, resuming, loggers) and no loop internals are touched. ``lightning-nas fit`` does the wrapping, so a
recipe's ``data:`` names the children's datamodule as for any method. (Serving the steps from the module's own
``train_dataloader`` would need ``trainer.fit(module)`` without a datamodule; LightningCLI passes ``datamodule=``.)

The children and their rewards are written out by :class:`~lightning_nas.callbacks.ChildRecorder` (added
when the trainer has none): ``children.jsonl``, the top-k table and ``best_arch.json``.

Under DDP, rank ``r`` trains children ``r, r+W, ...`` of the step; the archs come from a generator
seeded by ``(seed, step)``, identical on every rank, so nothing is broadcast; the rewards are
all-gathered and every rank applies the same update.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import Tensor, nn
from torch.utils.data import DataLoader
from typing_extensions import override

from lightning_nas.arch import Arch
from lightning_nas.callbacks.child_recorder import ChildRecorder
from lightning_nas.controllers.lstm import LSTMController
from lightning_nas.errors import ConfigError
from lightning_nas.modules.nasrl_data import NASRLData
from lightning_nas.modules.supernet import check_space_checkpoint, write_space_checkpoint
from lightning_nas.seeding import mix_seed, step_generator
from lightning_nas.spaces.token_space import TokenSpace

__all__ = ["NASRLModule"]

TASK_DEFAULTS = {  # the children's optimiser and reward: (max acc)^3 for images, c / ppl^2 for text
    "image": {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "grad_clip": None, "exponent": 3.0},
    "text": {"lr": 20.0, "momentum": 0.0, "weight_decay": 0.0, "grad_clip": 0.25, "exponent": 2.0},
}


class NASRLModule(LightningModule):
    """Search with an LSTM controller that emits children trained from scratch.

    Fit it with its data wrapped: ``trainer.fit(module, datamodule=NASRLData(datamodule))``.

    Args:
        space: ``LayerTokenSpace`` (CNN children) or ``RNNCellSpace`` (language-model children).
        controller_steps: controller steps per (Lightning) epoch.
        children_per_step: children sampled per controller step (the paper's m).
        seed: seeds the archs of step ``s`` (``(seed, s)``) and each child's initialisation.
        hidden_size: controller LSTM units (paper: 35).
        num_layers: controller LSTM layers (paper: 2).
        init_range: controller weights uniform in ``±init_range`` (paper: 0.08).
        tanh_constant: ENAS logit shaping constant (ENAS macro: 1.5); ``None``: plain logits.
        temperature: controller softmax temperature.
        lr: controller Adam learning rate (paper: 6e-4).
        baseline_decay: decay of the REINFORCE moving-average baseline (ENAS: 0.99).
        entropy_weight: weight of the controller's entropy bonus (ENAS: 1e-4; the paper: none).
        depth_start: layers of the first children (default: the space's ``num_layers``; paper: 6).
        depth_increment: layers added by the depth schedule (paper: 2).
        depth_every: children between depth increments (paper: 1,600).
        max_depth: the depth schedule's ceiling (paper: growth stops with the budget; 12,800 children from 6
            layers, +2 every 1,600, end at 20). ``None``: no ceiling.
        child_epochs: epochs each child trains (paper: 50).
        child_lr: children's SGD learning rate (default 0.1 for images, 20 for text).
        child_momentum: children's (Nesterov) momentum (default 0.9 for images, 0 for text).
        child_weight_decay: children's weight decay (default 1e-4 for images, 0 for text).
        child_grad_clip: children's gradient-norm clip (default none for images, 0.25 for text).
        child_train_batches: training batches per child epoch (default: all).
        child_val_batches: validation batches per child evaluation (default: all).
        reward_last_k: the reward uses the best validation score of the last ``k`` epochs (paper: 5).
        reward_exponent: images ``acc ** exponent`` (paper: 3); text ``c / ppl ** exponent`` (paper: 2).
        reward_c: the ``c`` of the text reward (paper: 80).
        child_progress: show a progress bar per child on rank 0.
    """

    def __init__(
        self, space: TokenSpace, controller_steps: int = 100, children_per_step: int = 8, seed: int = 0,
        hidden_size: int = 35, num_layers: int = 2, init_range: float = 0.08, tanh_constant: float | None = None,
        temperature: float | None = None, lr: float = 6e-4, baseline_decay: float = 0.99,
        entropy_weight: float = 0.0, depth_start: int | None = None, depth_increment: int = 2,
        depth_every: int = 1600, max_depth: int | None = None, child_epochs: int = 50, child_lr: float | None = None,
        child_momentum: float | None = None, child_weight_decay: float | None = None,
        child_grad_clip: float | None = None, child_train_batches: int | None = None,
        child_val_batches: int | None = None, reward_last_k: int = 5, reward_exponent: float | None = None,
        reward_c: float = 80.0, child_progress: bool = True,
    ) -> None:
        super().__init__()
        task = getattr(space, "task", None)
        if not isinstance(space, TokenSpace) or task not in TASK_DEFAULTS:
            raise TypeError(f"NASRLModule needs a LayerTokenSpace or RNNCellSpace, got {type(space).__name__}")
        if min(controller_steps, children_per_step, child_epochs, reward_last_k, depth_every) < 1:
            raise ValueError("controller_steps, children_per_step, child_epochs, reward_last_k and depth_every "
                             "must be at least 1")
        if not 0.0 <= baseline_decay < 1.0:
            raise ValueError(f"baseline_decay must lie in [0, 1), got {baseline_decay}")
        start = depth_start or getattr(space, "num_layers", None)
        if max_depth is not None and start is not None and (max_depth < start or depth_increment < 0):
            raise ValueError(f"NASRLModule's depth schedule needs max_depth >= the starting depth ({start}) and "
                             f"depth_increment >= 0; got max_depth={max_depth}, depth_increment={depth_increment}")
        self.save_hyperparameters(ignore=["space"])
        self.automatic_optimization = False
        self.space = space
        has_anchors = getattr(space, "skip_connections", False)
        with torch.random.fork_rng(devices=[]):  # the controller's initial weights depend on `seed` only
            torch.manual_seed(seed)
            self.controller = LSTMController(space.controller_vocab(), has_anchors, hidden_size, num_layers,
                                             init_range, tanh_constant, temperature)
        defaults = TASK_DEFAULTS[task]
        given = {"lr": child_lr, "momentum": child_momentum, "weight_decay": child_weight_decay,
                 "grad_clip": child_grad_clip, "exponent": reward_exponent}
        self.child_config = {k: defaults[k] if v is None else v for k, v in given.items()}
        self.baseline: float | None = None  # REINFORCE's moving average of the mean reward (in checkpoints)
        self.best_reward = float("nan")  # the best child's reward so far (in checkpoints)
        self.last_children: list[dict[str, Any]] = []  # the last step's children, for ChildRecorder
        self._child_data: Any = None

    # --- Lightning wiring -------------------------------------------------------------------
    @override
    def configure_callbacks(self) -> list[Any]:
        # Lightning replaces a trainer callback by a module's of the same type: keep a recipe's own recorder
        if any(isinstance(cb, ChildRecorder) for cb in self.trainer.callbacks):
            return []
        return [ChildRecorder()]

    @override
    def setup(self, stage: str) -> None:
        if stage != "fit":
            return
        data = self.trainer.datamodule
        if not isinstance(data, NASRLData):
            given = "no datamodule" if data is None else type(data).__name__
            raise ConfigError(
                f"NASRLModule is fitted with NASRLData around the children's datamodule, got {given}: call "
                "trainer.fit(module, datamodule=NASRLData(datamodule)) (lightning-nas fit does it for a recipe's "
                "`data:` section).")
        self._child_data = data.data
        if getattr(data, "num_classes", None):
            self.space.num_classes = int(data.num_classes)

    @override
    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(self.controller.parameters(), lr=self.hparams.lr)

    # --- the controller step ----------------------------------------------------------------
    def depth(self, step: int) -> int | None:
        """The children's depth at controller step ``step`` (``None`` for spaces without depth)."""
        if not getattr(self.space, "supports_depth", False):
            return None
        hp = self.hparams
        start = hp.depth_start or self.space.num_layers
        depth = start + hp.depth_increment * ((step * hp.children_per_step) // hp.depth_every)
        return min(depth, hp.max_depth) if hp.max_depth is not None else depth

    def program(self, step: int) -> list[Any]:
        """The controller's program at controller step ``step``."""
        return self.space.controller_program(self.depth(step))

    def sample_archs(self, step: int, n: int | None = None) -> list[Arch]:
        """The archs of controller step ``step``: the same on every rank (seeded by ``(seed, step)``)."""
        gen, program = step_generator(self.hparams.seed, step), self.program(step)
        with torch.no_grad():
            return [self.controller.sample(program, gen).arch for _ in range(n or self.hparams.children_per_step)]

    def update_controller(self, archs: Sequence[Mapping[str, Any]], rewards: Tensor,
                          program: Sequence[Any]) -> dict[str, float]:
        """One REINFORCE step with an EMA baseline (Zoph & Le 2017; ENAS's decay and entropy bonus).

        ``loss = -mean_k (R_k - b) log p(arch_k) - w · mean_k H_k``, then ``b ← decay · b + (1 - decay) · mean_k R_k``
        (``b`` starts at the first step's mean reward). Every arch is re-scored by teacher forcing, so the update
        needs only the archs and the all-gathered rewards: every DDP rank applies the same update.

        Returns:
            The logged scalars (``nasrl/loss``, ``nasrl/reward``, ``nasrl/baseline``, ``nasrl/entropy``).
        """
        hp = self.hparams
        rewards = rewards.detach().double().cpu()
        mean = float(rewards.mean())
        baseline = mean if self.baseline is None else self.baseline
        scored = [self.controller.log_prob(arch, program) for arch in archs]
        log_probs = torch.stack([s.log_prob for s in scored])
        entropy = torch.stack([s.entropy for s in scored]).mean()
        advantage = (rewards - baseline).to(log_probs)
        loss = -(advantage * log_probs).mean() - hp.entropy_weight * entropy
        # every parameter joins the graph, so DDP's reducer never waits for an unused one (e.g. no anchors drawn)
        loss = loss + 0.0 * sum(p.sum() for p in self.controller.parameters())
        optimizer = self.optimizers()
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()
        self.baseline = hp.baseline_decay * baseline + (1.0 - hp.baseline_decay) * mean
        return {"nasrl/loss": float(loss.detach()), "nasrl/reward": mean, "nasrl/baseline": baseline,
                "nasrl/entropy": float(entropy.detach())}

    @override
    def training_step(self, batch: Any, batch_idx: int) -> None:
        step = self.global_step  # Lightning's count of controller updates: one per controller step
        fast = bool(self.trainer.fast_dev_run)
        m = min(self.hparams.children_per_step, 2 * self.trainer.world_size) if fast else self.hparams.children_per_step
        archs = self.sample_archs(step, m)
        rank, world = self.global_rank, self.trainer.world_size
        local = torch.zeros(m, 4, dtype=torch.float64, device=self.device)
        for k in range(rank, m, world):
            local[k] = torch.tensor(self.train_child(archs[k], step, k), dtype=torch.float64)
        gathered = self.all_gather(local)  # (world, m, 4): each rank filled its own children's rows
        results = gathered.sum(0) if gathered.dim() == 3 else gathered
        logs = self.update_controller(archs, results[:, 0], self.program(step))
        self.last_children = [
            {"step": step, "child": step * self.hparams.children_per_step + k, "rank": k % world,
             "reward": float(r[0]), "score": float(r[1]), "params": int(r[2]), "depth": self.depth(step),
             "arch": arch} for k, (arch, r) in enumerate(zip(archs, results.cpu()))]
        step_best = max(c["reward"] for c in self.last_children)
        if not step_best <= self.best_reward:  # also replaces the initial NaN
            self.best_reward = step_best
        logs.update({"nasrl/best_reward": self.best_reward, "nasrl/score": float(results[:, 1].mean())})
        if self.depth(step) is not None:
            logs["nasrl/depth"] = float(self.depth(step))
        self.log_dict(logs, prog_bar=True, batch_size=m)

    # --- children -----------------------------------------------------------------------------
    def _limits(self) -> tuple[int, int | None, int | None]:
        hp = self.hparams
        if self.trainer.fast_dev_run:  # a smoke test: one short epoch per child
            n = 1 if self.trainer.fast_dev_run is True else min(int(self.trainer.fast_dev_run), 2)
            return 1, n, n
        return hp.child_epochs, hp.child_train_batches, hp.child_val_batches

    def train_child(self, arch: Mapping[str, Any], step: int, index: int) -> tuple[float, float, float, float]:
        """Train one child from scratch; return ``(reward, score, params, 1)`` (score: val accuracy or perplexity)."""
        epochs, train_limit, val_limit = self._limits()
        cfg, text = self.child_config, self.space.task == "text"
        data = self._child_data
        seed = mix_seed(self.hparams.seed, step, index)
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            net = self.space.build_child(arch).to(self.device)
            params = sum(p.numel() for p in net.parameters())
            opt = torch.optim.SGD(net.parameters(), lr=cfg["lr"], momentum=cfg["momentum"],
                                  weight_decay=cfg["weight_decay"], nesterov=cfg["momentum"] > 0)
            scores: list[float] = []
            bar = self._progress(f"child {step}.{index}", epochs * _count(data.train_dataloader(), train_limit))
            for _ in range(epochs):
                run_epoch(net, data.train_dataloader(), opt, train_limit, text, cfg["grad_clip"], bar, self.device)
                scores.append(evaluate(net, data.val_dataloader(), val_limit, text, self.device))
                if not math.isfinite(scores[-1]):
                    break
            if bar is not None:
                bar.close()
        return self.reward(scores), scores[-1], float(params), 1.0

    def reward(self, scores: list[float]) -> float:
        """Images: ``(max acc of the last k epochs) ** e``; text: ``c / (min ppl of the last k) ** e``.

        A child that diverged (a non-finite score) gets reward 0.
        """
        last = scores[-self.hparams.reward_last_k:]
        if not all(math.isfinite(s) for s in last):
            return 0.0
        if self.space.task == "text":
            return self.hparams.reward_c / min(last) ** self.child_config["exponent"]
        return max(last) ** self.child_config["exponent"]

    def _progress(self, desc: str, total: int) -> Any:
        if not (self.hparams.child_progress and self.trainer.is_global_zero):
            return None
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)

    # --- checkpoints ----------------------------------------------------------------------------
    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        write_space_checkpoint(checkpoint, self.space)
        checkpoint["nasrl"] = {"baseline": self.baseline, "best_reward": self.best_reward}

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        check_space_checkpoint(self.space, checkpoint)
        state = checkpoint.get("nasrl", {})
        self.baseline = state.get("baseline")
        self.best_reward = float(state.get("best_reward", float("nan")))


def _count(loader: DataLoader, limit: int | None) -> int:
    return min(len(loader), limit) if limit else len(loader)


def _lm_loss(net: nn.Module, x: Tensor, y: Tensor, state: Any) -> tuple[Tensor, Any]:
    logits, state = net(x, state)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
    return loss, [(h.detach(), c.detach()) for h, c in state]


def run_epoch(net: nn.Module, loader: DataLoader, opt: torch.optim.Optimizer, limit: int | None, text: bool,
              grad_clip: float | None, bar: Any, device: torch.device) -> None:
    """One training epoch of a child (stateful BPTT for language models)."""
    net.train()
    state = None
    for i, (x, y) in enumerate(loader):
        if limit is not None and i >= limit:
            break
        x, y = x.to(device), y.to(device)
        if text:
            loss, state = _lm_loss(net, x, y, state)
        else:
            loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
        opt.step()
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss):.3f}", refresh=False)
        if not torch.isfinite(loss):
            return


@torch.no_grad()
def evaluate(net: nn.Module, loader: DataLoader, limit: int | None, text: bool, device: torch.device) -> float:
    """Validation accuracy (images) or perplexity (text) of a child."""
    net.eval()
    total, correct, nll, state = 0, 0.0, 0.0, None
    for i, (x, y) in enumerate(loader):
        if limit is not None and i >= limit:
            break
        x, y = x.to(device), y.to(device)
        if text:
            loss, state = _lm_loss(net, x, y, state)
            nll, total = nll + float(loss) * y.numel(), total + y.numel()
        else:
            correct, total = correct + float((net(x).argmax(1) == y).sum()), total + len(y)
    if total == 0:
        return float("nan")
    return math.exp(min(nll / total, 50.0)) if text else correct / total
