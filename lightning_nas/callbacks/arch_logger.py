"""``ArchLogger``: the per-decision choice probabilities of a search, every epoch, as a heatmap, JSON and metrics."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from lightning.pytorch import Callback, LightningModule, Trainer
from typing_extensions import override

from lightning_nas.callbacks.protocols import missing_members
from lightning_nas.search.report import live_wandb_run, plot_probabilities

__all__ = ["ArchLogger", "HasArchProbabilities", "mean_entropy"]

Probabilities = Mapping[str, Mapping[Any, float]]


class HasArchProbabilities(Protocol):
    """A module that learns a distribution over archs (ProxylessNAS logits, a PARSEC prior, ...)."""

    def arch_probabilities(self) -> dict[str, dict[Any, float]]: ...


def mean_entropy(probs: Probabilities) -> float:
    """The entropy (nats) of each decision's distribution, averaged over the decisions."""
    entropies = [-sum(p * math.log(p) for p in d.values() if p > 0) for d in probs.values()]
    return sum(entropies) / max(1, len(entropies))


class ArchLogger(Callback):
    """Log a search's choice probabilities at the end of every ``every_n_epochs``-th training epoch.

    Works with any module that offers ``arch_probabilities() -> {decision: {value: probability}}``.
    Rank 0 writes ``arch_probs_epoch{N}.png`` (a heatmap) and ``arch_probs_epoch{N}.json`` into the run
    folder; every logger gets ``arch/entropy`` (the mean per-decision entropy), and a ``WandbLogger``
    with a live run also a ``wandb.Table`` of the probabilities and the heatmap image.

    Args:
        every_n_epochs: log every this many epochs.
        dirpath: where the files go (default: the trainer's ``log_dir``, else ``default_root_dir``).

    Raises:
        TypeError: in ``setup``, when the module has no ``arch_probabilities()``.

    Example::

        trainer = Trainer(callbacks=[PathSampling(), ArchLogger()])
        trainer.fit(ProxylessModule(space), datamodule=dm)
    """

    def __init__(self, every_n_epochs: int = 1, dirpath: str | None = None) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"ArchLogger needs every_n_epochs >= 1, got {every_n_epochs}")
        self.every_n_epochs, self.dirpath = every_n_epochs, dirpath
        self.last_files: list[Path] = []

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if missing_members(pl_module, ("arch_probabilities",)):
            raise TypeError(
                f"ArchLogger needs a module with arch_probabilities() -> {{decision: {{value: probability}}}}; "
                f"{type(pl_module).__name__} has none. Use it with a method that learns a distribution over archs, "
                "such as ProxylessModule."
            )

    def _folder(self, trainer: Trainer) -> Path:
        return Path(self.dirpath or trainer.log_dir or trainer.default_root_dir)

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        probs = pl_module.arch_probabilities()
        entropy = mean_entropy(probs)
        for logger in trainer.loggers:
            logger.log_metrics({"arch/entropy": entropy}, step=trainer.global_step)
        folder = self._folder(trainer)  # trainer.log_dir broadcasts: every rank must ask
        if not trainer.is_global_zero:
            return
        self.last_files = self._write(probs, trainer.current_epoch, folder)
        for logger in trainer.loggers:
            run = live_wandb_run(logger)
            if run is not None:
                self._log_wandb(run, probs, self.last_files[0], trainer.global_step)

    @staticmethod
    def _write(probs: Probabilities, epoch: int, folder: Path) -> list[Path]:
        folder.mkdir(parents=True, exist_ok=True)
        doc = {"epoch": epoch, "probabilities": {k: {str(v): p for v, p in d.items()} for k, d in probs.items()}}
        json_path = folder / f"arch_probs_epoch{epoch}.json"
        json_path.write_text(json.dumps(doc, indent=1) + "\n")
        png = plot_probabilities(probs, folder / f"arch_probs_epoch{epoch}.png", f"choice probabilities, epoch {epoch}")
        return [png, json_path]

    @staticmethod
    def _log_wandb(run: Any, probs: Probabilities, png: Path, step: int) -> None:
        import wandb

        rows = [[k, str(v), float(p)] for k, d in probs.items() for v, p in d.items()]
        table = wandb.Table(columns=["decision", "value", "probability"], data=rows)
        image = wandb.Image(str(png))
        run.log({"arch/probabilities": table, "arch/probabilities_map": image, "trainer/global_step": step})

