"""``PathSampling``: a new single path every training batch, identical on every DDP rank."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from typing_extensions import override

from lightning_nas.arch import Arch
from lightning_nas.callbacks.protocols import require_space
from lightning_nas.errors import ConfigError
from lightning_nas.seeding import step_generator
from lightning_nas.strategies.path_policy import draw_path, path_sampler


class PathSampling(Callback):
    """Activate one path of the module's ``space`` before every training batch.

    In ``uniform`` mode every decision is drawn uniformly. In ``constrained`` mode (SPOS's official
    FLOPs-bin sampling) a cost bin between ``cost_min`` and ``cost_max`` is drawn uniformly, then
    uniform archs are drawn until one falls in it, at most ``max_tries`` times, else a plain uniform
    arch. A module that implements ``sample_path(generator) -> Arch | None`` (ProxylessNAS after its
    warm-up; see :mod:`lightning_nas.strategies.path_policy`) draws the path itself, from the same generator.

    The step ``i`` of a path is this callback's own count of the training batches it sampled (``sampled``),
    saved in its checkpoint state: a resumed run continues with the paths an uninterrupted one draws.

    Args:
        seed: the sampling seed; the path of batch ``i`` is a function of ``(seed, i)`` only.
        mode: ``"uniform"`` or ``"constrained"``.
        metric: the cost of constrained sampling: ``macs``, ``params``, ``bitops`` or ``latency_ms``.
        cost_min: lower edge of the cost bins (default: the space's minimum).
        cost_max: upper edge of the cost bins (default: the space's maximum).
        bins: number of cost bins.
        max_tries: draws per bin before falling back to a uniform arch.
        trace: a JSON-lines file to append every path to (one file per rank), for debugging.
        latency_table: a ``LatencyTable`` JSON file for ``metric: latency_ms``.
    """

    def __init__(self, seed: int = 0, mode: str = "uniform", metric: str = "macs", cost_min: float | None = None,
                 cost_max: float | None = None, bins: int = 7, max_tries: int = 500, trace: str | None = None,
                 latency_table: str | None = None) -> None:
        if mode not in ("uniform", "constrained"):
            raise ValueError(f"PathSampling mode must be 'uniform' or 'constrained', got {mode!r}")
        if bins < 1 or max_tries < 1:
            raise ValueError("PathSampling needs bins >= 1 and max_tries >= 1")
        self.seed, self.mode, self.metric, self.bins, self.max_tries = seed, mode, metric, bins, max_tries
        self.cost_min, self.cost_max, self.trace, self.latency_table = cost_min, cost_max, trace, latency_table
        self.last_arch: Arch | None = None
        self.sampled = 0
        self.fallbacks = 0
        self._table: Any = None

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(seed=self.seed, mode=self.mode)

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.check_before_run(pl_module)

    def check_before_run(self, pl_module: LightningModule) -> None:
        """Check the module's space, and in ``constrained`` mode the latency table and the cost bins, before any
        work (the CLI calls it before anything is written; ``setup()`` too)."""
        space = require_space(pl_module, "PathSampling")
        path_sampler(pl_module)  # a module's own sampler, if it declares one, must be callable
        if self.mode == "constrained" and self._table is None:
            from lightning_nas.cost import LatencyTable, cost_range

            if self.metric == "latency_ms":
                if self.latency_table is None:
                    raise ConfigError("PathSampling(metric='latency_ms') needs latency_table=<table.json>")
                self._table = LatencyTable.load(self.latency_table)
                self._table.check(space)
            lo, hi = cost_range(space, self.metric, self._table)
            self.cost_min = lo if self.cost_min is None else self.cost_min
            self.cost_max = hi if self.cost_max is None else self.cost_max
            if not (self.cost_min < self.cost_max and self.cost_max >= lo and self.cost_min <= hi):
                raise ConfigError(
                    f"PathSampling cost bins [{self.cost_min}, {self.cost_max}] {self.metric} miss the space's "
                    f"range [{lo}, {hi}]; pick cost_min/cost_max inside it."
                )

    def sample(self, pl_module: LightningModule, step: int) -> Arch:
        """The path of batch ``step`` (deterministic in ``(seed, step)``)."""
        space = pl_module.space
        gen = step_generator(self.seed, step)
        arch = draw_path(pl_module, gen)
        if arch is not None:
            return arch
        if self.mode == "uniform":
            return space.sample(gen)
        return self._constrained(space, gen)

    def _constrained(self, space: Any, gen: torch.Generator) -> Arch:
        from lightning_nas.cost import cost_of

        width = (self.cost_max - self.cost_min) / self.bins
        b = int(torch.randint(self.bins, (1,), generator=gen))
        lo, hi = self.cost_min + b * width, self.cost_min + (b + 1) * width
        for _ in range(self.max_tries):
            arch = space.sample(gen)
            if lo <= cost_of(space, arch, self.metric, self._table) <= hi:
                return arch
        self.fallbacks += 1
        return space.sample(gen)

    @override
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        step = self.sampled  # batches sampled before this one, over the run (restored on resume)
        arch = self.sample(pl_module, step)
        pl_module.space.activate(arch, validate=False)
        self.last_arch = arch
        self.sampled += 1
        if self.trace:
            self._write_trace(trainer, step, arch)

    def _write_trace(self, trainer: Trainer, step: int, arch: Arch) -> None:
        path = Path(self.trace)
        if trainer.world_size > 1:
            path = path.with_name(f"{path.stem}.rank{trainer.global_rank}{path.suffix}")
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(json.dumps({"step": step, "rank": trainer.global_rank, "arch": arch}) + "\n")

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "mode": self.mode, "sampled": self.sampled, "fallbacks": self.fallbacks}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.sampled = state_dict.get("sampled", 0)
        self.fallbacks = state_dict.get("fallbacks", 0)


def path_sampling_unless_present(trainer: Trainer, seed: int = 0) -> list[Callback]:
    """For a single-path module's ``configure_callbacks``: ``[PathSampling(seed=seed)]`` when ``trainer`` has no
    ``PathSampling``, else ``[]`` (a recipe's own, with its mode and seed, is kept)."""
    if any(isinstance(cb, PathSampling) for cb in trainer.callbacks):
        return []
    return [PathSampling(seed=seed)]
