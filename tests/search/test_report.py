"""The one reporting module: figures that leave matplotlib's process state alone, the W&B check, and the evolution
search's report written from a ``SearchResult`` snapshot alone (no callback)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from lightning.pytorch.loggers import CSVLogger, Logger

from lightning_nas.search.constraints import Constraint
from lightning_nas.search.report import (
    SearchResult,
    live_wandb_run,
    plot_metric,
    plot_pareto,
    plot_probabilities,
    topk_markdown,
    write_report,
)

CAP = Constraint("macs", max=25.0)


def _result() -> SearchResult:
    scores = [0.2, 0.5, 0.4, 0.9, 0.7, 0.6]
    history = tuple({"generation": i // 3, "arch": {"op": i}, "costs": {"macs": 10.0 * i}, "score": s,
                     "constraint": CAP.name, "satisfied": True} for i, s in enumerate(scores))
    legal = [r for r in history if CAP.satisfied(r["costs"])]
    best = max(legal, key=lambda r: r["score"])
    return SearchResult("evolution", (CAP,), (CAP.name,), history, {CAP.name: best}, 2, plot_metric([CAP]))


class Metrics(Logger):
    """Records what is logged."""

    def __init__(self) -> None:
        super().__init__()
        self.logged: list[dict[str, float]] = []

    @property
    def name(self) -> str:
        return "metrics"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.logged.append(dict(metrics))

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass


@pytest.fixture
def svg_backend() -> Iterator[None]:
    """The user chose another backend than Agg; every figure function must leave it as it is."""
    import matplotlib

    before = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        yield
    finally:
        matplotlib.use(before)


def test_figures_leave_the_process_backend_and_pyplot_alone(tmp_path: Path, svg_backend: None) -> None:
    import matplotlib
    import matplotlib.pyplot as plt

    open_figures = plt.get_fignums()
    probs = plot_probabilities({"a": {"x": 0.25, "y": 0.75}, "b": {1: 1.0}}, tmp_path / "probs.png", "t")
    pareto = plot_pareto(_result(), tmp_path / "pareto.png")
    assert probs.stat().st_size > 1000 and pareto.stat().st_size > 1000
    assert matplotlib.get_backend() == "svg" and plt.get_fignums() == open_figures


def test_report_is_written_from_the_snapshot_alone(tmp_path: Path) -> None:
    result, logger = _result(), Metrics()
    trainer = SimpleNamespace(loggers=[logger], global_step=3)
    report = write_report(result, trainer, space=None, out_dir=None)  # no folder: nothing written, only logged
    assert report.run_dir is None
    assert logger.logged == [{"search/candidates": 6.0, "search/best_acc": 0.5, "search/best_macs": 10.0}]
    assert report.lines[0].startswith(f"EvolutionSearch [{CAP.name}]: best arch scores 0.5000 (macs=10)")
    assert "median of the 3 random archs of generation 0: 0.4000" in report.lines[0]
    assert report.lines[1] == f"  best arch: {json.dumps({'op': 1})}"
    table = topk_markdown(result).splitlines()
    assert table[0] == "| constraint | rank | score | macs | generation | arch |"
    assert [row.split(" | ")[2] for row in table[2:]] == ["0.5", "0.4"]  # top 2 of the legal three


def test_only_live_wandb_runs_count(tmp_path: Path) -> None:
    from lightning.pytorch.loggers import WandbLogger

    assert live_wandb_run(CSVLogger(tmp_path)) is None
    disabled = WandbLogger(mode="disabled", save_dir=str(tmp_path))
    try:
        assert live_wandb_run(disabled) is None
    finally:
        disabled.experiment.finish()  # or a later WandbLogger would reuse this run


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_an_offline_wandb_run_gets_the_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    from tests.helpers.tiny_space import TinySpace

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    if wandb.run is not None:  # a run an earlier test left open would be reused by the logger
        wandb.run.finish()
    wandb.teardown()  # W&B keeps the settings of its first run in this process (the tests' mode is disabled)
    space, gen = TinySpace(), torch.Generator().manual_seed(0)
    history = tuple({**r, "arch": space.sample(gen)} for r in _result().history)
    best = max((r for r in history if CAP.satisfied(r["costs"])), key=lambda r: r["score"])
    result = SearchResult("evolution", (CAP,), (CAP.name,), history, {CAP.name: best}, 2, "macs")
    logger = WandbLogger(project="report-test", save_dir=str(tmp_path), offline=True)
    run = live_wandb_run(logger)
    assert run is not None
    report = write_report(result, SimpleNamespace(loggers=[logger], global_step=0), space, tmp_path / "out")
    run.finish()
    wandb.teardown()
    assert (report.run_dir / "search_pareto.png").is_file()
    assert json.loads((tmp_path / "out" / "best_arch.json").read_text())["arch"] == best["arch"]
    runs = list(tmp_path.rglob("offline-run-*"))
    assert runs and list(runs[0].glob("*.wandb"))
