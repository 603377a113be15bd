"""``ChildRecorder``: NAS-RL's record of every child it trained, and its answer.

After each controller step it reads the module's ``last_children`` (arch, reward, score, parameters, depth) and
keeps the top-k table; rank 0 appends them to ``children.jsonl`` and, when the best child changes, publishes it
(``best_arch.json`` through :func:`~lightning_nas.search.output.publish_arch`, and ``top_children.json``). The
controller's update is the module's own (:meth:`~lightning_nas.modules.NASRLModule.update_controller`); this
callback only observes. ``NASRLModule`` adds one with the defaults when the trainer has none.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from typing_extensions import override

from lightning_nas.callbacks.protocols import missing_members
from lightning_nas.search.output import publish_arch, run_folder

__all__ = ["ChildRecorder"]


class ChildRecorder(Callback):
    """The table of the best children of a controller search, and its output files.

    Args:
        top_k: children kept in the best-children table.
        dirpath: folder of ``children.jsonl`` and ``best_arch.json`` (default: a new
            ``<default_root_dir>/nasrl-<time>/`` per run; the best arch is also copied to ``<default_root_dir>``).

    Example::

        trainer = Trainer(callbacks=[ChildRecorder(top_k=20)])
        trainer.fit(NASRLModule(space=LayerTokenSpace()), datamodule=NASRLData(DigitsDataModule()))
    """

    def __init__(self, top_k: int = 10, dirpath: str | None = None) -> None:
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        self.top_k, self.dirpath = top_k, dirpath
        self.best: list[dict[str, Any]] = []
        self.children_seen = 0
        self.folder: Path | None = None
        self.root: Path | None = None

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        missing = missing_members(pl_module, ("last_children", "space"))
        if missing:
            raise TypeError(
                f"ChildRecorder needs a module that lists each step's children in `last_children` and has a `space`; "
                f"{type(pl_module).__name__} lacks {', '.join(missing)}. Use it with lightning_nas.modules.NASRLModule."
            )
        self.root = Path(trainer.default_root_dir)
        if trainer.is_global_zero and self.folder is None:  # rank 0 writes; a new folder per run
            self.folder = Path(self.dirpath) if self.dirpath else run_folder(self.root, "nasrl")

    @override
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.record(trainer, pl_module, list(pl_module.last_children))

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
        return {"best": self.best, "children_seen": self.children_seen}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = list(state_dict.get("best", []))
        self.children_seen = state_dict.get("children_seen", 0)
