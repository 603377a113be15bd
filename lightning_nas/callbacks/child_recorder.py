"""``ControllerUpdate``: NAS-RL's policy-gradient step and its bookkeeping.

REINFORCE with an exponential-moving-average baseline (Zoph & Le 2017; ENAS's decay 0.99 and
optional entropy bonus): ``loss = -mean_k (R_k - b) log p(arch_k) - w · mean_k H_k``, then
``b ← decay · b + (1 - decay) · mean_k R_k`` (``b`` starts at the first step's mean reward). Every
arch is re-scored by teacher forcing (``controller.log_prob``), so the update needs only the archs and
the all-gathered rewards: every DDP rank applies the same update and the controllers stay identical.

The module calls :meth:`ControllerUpdate.update` from inside its ``training_step`` (so Lightning counts
the optimizer step); the callback owns the baseline, the top-k table and the output files
(``children.jsonl``: one line per child; ``best_arch.json``: the best child so far, via ``save_arch``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor
from typing_extensions import override

from lightning_nas.callbacks.protocols import missing_members
from lightning_nas.search.output import publish_arch, run_folder

__all__ = ["ControllerUpdate", "HasController"]


class HasController(Protocol):
    """A module that searches with a controller: ``controller`` with ``log_prob(arch, program)``, and a space."""

    controller: Any
    space: Any


class ControllerUpdate(Callback):
    """The REINFORCE update of a controller, its baseline, and the table of the best children.

    Args:
        baseline_decay: decay of the moving-average baseline (ENAS: 0.99).
        entropy_weight: weight of the entropy bonus (ENAS: 1e-4; the paper: none).
        top_k: children kept in the best-children table.
        dirpath: folder of ``children.jsonl`` and ``best_arch.json`` (default: a new
            ``<default_root_dir>/nasrl-<time>/`` per run; the best arch is also copied to ``<default_root_dir>``).

    Example::

        trainer = Trainer(callbacks=[ControllerUpdate(entropy_weight=1e-4)])
        trainer.fit(NASRLModule(space=LayerTokenSpace()), datamodule=DigitsDataModule())
    """

    def __init__(self, baseline_decay: float = 0.99, entropy_weight: float = 0.0, top_k: int = 10,
                 dirpath: str | None = None) -> None:
        if not 0.0 <= baseline_decay < 1.0:
            raise ValueError(f"baseline_decay must lie in [0, 1), got {baseline_decay}")
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        self.baseline_decay, self.entropy_weight = baseline_decay, entropy_weight
        self.top_k, self.dirpath = top_k, dirpath
        self.baseline: float | None = None
        self.best: list[dict[str, Any]] = []
        self.children_seen = 0
        self.folder: Path | None = None
        self.root: Path | None = None

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        missing = missing_members(pl_module, ("controller", "space"))
        if not missing and not hasattr(pl_module.controller, "log_prob"):
            missing = ["controller.log_prob"]
        if missing:
            raise TypeError(
                f"ControllerUpdate needs a module with a `controller` offering log_prob(arch, program) and a `space`; "
                f"{type(pl_module).__name__} lacks {', '.join(missing)}. Use it with lightning_nas.modules.NASRLModule."
            )
        self.root = Path(trainer.default_root_dir)
        if trainer.is_global_zero and self.folder is None:  # rank 0 writes; a new folder per run
            self.folder = Path(self.dirpath) if self.dirpath else run_folder(self.root, "nasrl")

    def update(self, pl_module: LightningModule, archs: Sequence[Mapping[str, Any]], rewards: Tensor,
               program: Sequence[Any]) -> dict[str, float]:
        """One REINFORCE step on the module's controller; returns the logged scalars."""
        rewards = rewards.detach().double().cpu()
        mean = float(rewards.mean())
        baseline = mean if self.baseline is None else self.baseline
        scored = [pl_module.controller.log_prob(arch, program) for arch in archs]
        log_probs = torch.stack([s.log_prob for s in scored])
        entropy = torch.stack([s.entropy for s in scored]).mean()
        advantage = (rewards - baseline).to(log_probs)
        loss = -(advantage * log_probs).mean() - self.entropy_weight * entropy
        # every parameter joins the graph, so DDP's reducer never waits for an unused one (e.g. no anchors drawn)
        loss = loss + 0.0 * sum(p.sum() for p in pl_module.controller.parameters())
        optimizer = pl_module.optimizers()
        optimizer.zero_grad()
        pl_module.manual_backward(loss)
        optimizer.step()
        self.baseline = self.baseline_decay * baseline + (1.0 - self.baseline_decay) * mean
        return {"nasrl/loss": float(loss.detach()), "nasrl/reward": mean, "nasrl/baseline": baseline,
                "nasrl/entropy": float(entropy.detach())}

    def record(self, trainer: Trainer, pl_module: LightningModule, children: Sequence[dict[str, Any]]) -> None:
        """Add a step's children to the top-k table; rank 0 appends them to ``children.jsonl`` and rewrites
        ``best_arch.json`` when the best child changes."""
        self.children_seen += len(children)
        previous = self.best[0]["child"] if self.best else None
        self.best = sorted([*self.best, *children], key=lambda c: -c["reward"])[: self.top_k]
        if not trainer.is_global_zero or self.folder is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        with (self.folder / "children.jsonl").open("a") as f:
            for child in children:
                f.write(json.dumps(child) + "\n")
        best = self.best[0]
        if best["child"] != previous:
            meta = {k: v for k, v in best.items() if k != "arch"}
            publish_arch(best["arch"], pl_module.space, self.folder, self.root, announce=False, **meta)
            (self.folder / "top_children.json").write_text(json.dumps(self.best, indent=1) + "\n")

    @property
    def best_reward(self) -> float:
        return self.best[0]["reward"] if self.best else float("nan")

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"baseline": self.baseline, "best": self.best, "children_seen": self.children_seen}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.baseline = state_dict.get("baseline")
        self.best = list(state_dict.get("best", []))
        self.children_seen = state_dict.get("children_seen", 0)
