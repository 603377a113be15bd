"""Everything a search reports, in one place: figures, tables, the W&B check, and the evolution search's files.

- **Figures** are drawn on a :class:`matplotlib.figure.Figure` with its own Agg canvas (:func:`new_figure`), never
  through ``pyplot``: the process's matplotlib backend and pyplot's list of open figures stay as the user left them.
  :func:`plot_probabilities` (a choice-probability heatmap, :class:`~lightning_nas.callbacks.ArchLogger`) and
  :func:`plot_pareto` (score against cost, the evolution search) are here; InstaNAS draws its own on
  :func:`new_figure`.
- **W&B**: :func:`live_wandb_run` is the one test of "does this logger have a live W&B run".
- **The evolution search's report**: :class:`SearchResult` is what the search found (a snapshot, the report's only
  input); :func:`write_report` writes it into a new run folder of the search's root, ``evolution-<time>/``:
  ``best_arch.json`` (``best_arch_<constraint>.json`` with several constraints, ``best_arch.json`` being the first
  constraint's; each also copied to the root as the latest answer, see :mod:`lightning_nas.search.output`),
  ``search_history.jsonl``, ``search_topk.md`` and ``search_pareto.png``, and logs the same to the trainer's
  loggers (a top-k table, the Pareto image and the best-arch artifacts on W&B). :class:`SearchProgress` is the
  search's progress bar.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.utilities import rank_zero_warn
from tqdm.auto import tqdm

from lightning_nas.search import constraints as _constraints
from lightning_nas.search.constraints import Constraint
from lightning_nas.search.evolution import EvolutionConfig, EvolutionState, Record, top_k
from lightning_nas.search.output import next_command, publish_arch, run_folder

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "SearchProgress",
    "SearchReport",
    "SearchResult",
    "live_wandb_run",
    "new_figure",
    "plot_axis_cost",
    "plot_metric",
    "plot_pareto",
    "plot_probabilities",
    "save_figure",
    "summary_lines",
    "topk_rows",
    "write_report",
]

Probabilities = Mapping[str, Mapping[Any, float]]


# --- figures (no pyplot) -------------------------------------------------------------------------
def new_figure(width: float, height: float) -> Figure:
    """A figure with its own Agg canvas: drawing and saving it leave the process's matplotlib backend alone."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: Path, dpi: int = 80) -> Path:
    """Lay the figure out tightly and write it (the format from ``path``'s suffix)."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    return path


def plot_probabilities(probs: Probabilities, path: Path, title: str = "") -> Path:
    """A heatmap, one row per decision, one column per value (values in order of first appearance)."""
    import numpy as np

    columns = list(dict.fromkeys(str(v) for d in probs.values() for v in d))
    grid = np.full((len(probs), len(columns)), np.nan)
    for row, d in enumerate(probs.values()):
        for value, p in d.items():
            grid[row, columns.index(str(value))] = p
    fig = new_figure(1.0 + 0.8 * len(columns), 1.0 + 0.3 * len(probs))
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(columns)), columns, rotation=45, ha="right")
    ax.set_yticks(range(len(probs)), list(probs))
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="probability")
    return save_figure(fig, path, dpi=80)


def plot_pareto(result: SearchResult, path: Path) -> Path:
    """Every scored candidate's score against its cost (``result.plot_metric``; the candidate's index if it has
    none), per run, with the Pareto front, the best arch of each run and the constraints' bounds."""
    metric = result.plot_metric
    fig = new_figure(6, 4.5)
    ax = fig.add_subplot()

    def x_of(r: Record, i: int) -> float:
        return r["costs"].get(metric, i)

    for name in result.run_names:
        points = [(x_of(r, i), r["score"]) for i, r in enumerate(result.history) if r["constraint"] == name]
        ax.scatter(*zip(*points) if points else ([], []), s=10, alpha=0.5, label=name)
    front, best = [], -float("inf")
    for x, y in sorted((x_of(r, i), r["score"]) for i, r in enumerate(result.history)):
        if y > best:
            front.append((x, y))
            best = y
    if front:
        ax.step(*zip(*front), where="post", color="black", lw=1, label="Pareto front")
    for name, r in result.best.items():
        ax.scatter([x_of(r, result.history.index(r))], [r["score"]], marker="*", s=150, edgecolor="black",
                   label=f"best {name}")
    for c in result.constraints:
        for bound in (c.min, c.max):
            if bound is not None and c.metric == metric:
                ax.axvline(bound, ls="--", color="grey", lw=1)
    known = any(metric in r["costs"] for r in result.history)
    ax.set_xlabel(metric if known else "candidate")
    ax.set_ylabel("val accuracy (re-calibrated BN)")
    ax.legend(fontsize=7)
    return save_figure(fig, path, dpi=120)


def plot_metric(constraints: Sequence[Constraint]) -> str:
    """The cost on the Pareto plot's x axis: latency if a constraint bounds it, else MACs."""
    return "latency_ms" if any(c.metric == "latency_ms" for c in constraints) else "macs"


def plot_axis_cost(space: Any, metric: str, latency: Any = None) -> Callable[[Any], float] | None:
    """The cost function of the plot's axis, or ``None`` (with a warning) when the space has no such cost: a space
    without cost tables still gets searched, and its candidates are plotted by index."""
    try:
        fn = _constraints.cost_function(space, metric, latency)
        fn(space.sample(torch.Generator().manual_seed(0)))
    except (ImportError, ValueError, AttributeError, NotImplementedError) as err:
        rank_zero_warn(f"EvolutionSearch: no {metric} cost for {space.space_name} ({err}); plotting by index.")
        return None
    return fn


# --- W&B -----------------------------------------------------------------------------------------
def live_wandb_run(logger: Any) -> Any:
    """The logger's W&B run, or ``None`` unless it is a ``WandbLogger`` whose run is live (not disabled)."""
    from lightning.pytorch.loggers import WandbLogger

    if not isinstance(logger, WandbLogger):
        return None
    run = logger.experiment
    if run is None or getattr(run, "disabled", False) or type(run).__name__ == "RunDisabled":
        return None
    return run


# --- the evolution search's report ---------------------------------------------------------------
@dataclass(frozen=True)
class SearchResult:
    """What an evolution search found: the report's only input, a snapshot taken when the search ends.

    Attributes:
        strategy: ``"evolution"`` or ``"random"``.
        constraints: the constraints, one per run (none: one unconstrained run).
        run_names: the runs' names (a constraint's name, or ``"unconstrained"``), in order.
        history: every scored candidate of every run, in scoring order.
        best: the best record per run name; a run whose constraint no arch met is absent.
        topk: the number of rows per run in the top-k table.
        plot_metric: the cost on the Pareto plot's x axis.
        test_scores: top-1 of each best arch on the test split, when it was measured.
    """

    strategy: str
    constraints: tuple[Constraint, ...]
    run_names: tuple[str, ...]
    history: tuple[Record, ...]
    best: Mapping[str, Record]
    topk: int
    plot_metric: str
    test_scores: Mapping[str, float] = field(default_factory=dict)

    def run_history(self, name: str) -> list[Record]:
        """The records of one run, in scoring order."""
        return [r for r in self.history if r["constraint"] == name]


@dataclass(frozen=True)
class SearchReport:
    """What :func:`write_report` left: the run folder (``None`` when nothing was written) and the summary lines."""

    run_dir: Path | None
    lines: list[str]


class SearchProgress:
    """Candidates scored / total (on rank 0), with the constraint, the generation and the best score so far."""

    def __init__(self, config: EvolutionConfig, runs: list[EvolutionState], quiet: bool) -> None:
        self.config, self.runs = config, runs
        self.bar = tqdm(total=config.generations * config.population * len(runs), desc="EvolutionSearch",
                        initial=sum(r.generation for r in runs) * config.population, unit="cand", disable=quiet,
                        mininterval=0)  # redraw per candidate: each takes far longer than a redraw

    def update(self, n: int) -> None:
        """``n`` more candidates scored (or found scored in a resumed state)."""
        if n > 0:
            self.bar.update(n)

    def generation_done(self, run: EvolutionState) -> None:
        """Jump to the generation's end (it may have held fewer legal candidates than the population)."""
        end = (self.runs.index(run) * self.config.generations + run.generation) * self.config.population
        self.bar.update(max(0, end - self.bar.n))
        best = top_k(run.history, 1)
        self.bar.set_postfix(constraint=run.name, generation=f"{run.generation}/{self.config.generations}",
                             best=f"{best[0]['score']:.4f}" if best else "-")

    def close(self) -> None:
        self.bar.close()


def write_report(result: SearchResult, trainer: Trainer, space: Any, out_dir: Path | None) -> SearchReport:
    """Write the files into a new run folder under ``out_dir`` (none if ``None``), log to the trainer's loggers.

    Returns:
        The run folder and the summary lines, for the caller to print last (after the progress bars are gone).
    """
    files: dict[str, Path] = {}
    folder = None
    if out_dir is not None:
        folder = run_folder(out_dir, "evolution")
        for i, (name, rec) in enumerate(result.best.items()):
            extra = {"test_acc": result.test_scores[name]} if name in result.test_scores else {}
            meta = {"score": rec["score"], "costs": rec["costs"], "constraint": name, "strategy": result.strategy,
                    **extra}
            # best_arch.json is the first constraint's answer (the one retrain.yaml reads by default)
            stems = [f"best_arch_{name}"] if len(result.run_names) > 1 else []
            stems += ["best_arch"] if i == 0 else []
            for stem in stems:
                files.setdefault(name, publish_arch(rec["arch"], space, folder, out_dir, stem, announce=False, **meta))
        with open(folder / "search_history.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in result.history)
        (folder / "search_topk.md").write_text(topk_markdown(result))
        plot_pareto(result, folder / "search_pareto.png")
    _log(result, trainer, folder, files)
    lines = summary_lines(result)
    if out_dir is not None:
        lines.append(f"Outputs: {folder}. Retrain the best arch: "
                     f"{next_command(out_dir / 'best_arch.json', getattr(trainer, 'datamodule', None))}")
    return SearchReport(folder, lines)


def summary_lines(result: SearchResult) -> list[str]:
    """Per constraint: the best arch's score next to the median score of the random archs of generation 0."""
    lines = []
    for name in result.run_names:
        best = result.best.get(name)
        if best is None:
            lines.append(f"EvolutionSearch [{name}]: no arch met the constraint")
            continue
        random_scores = sorted(r["score"] for r in result.run_history(name) if r["generation"] == 0)
        median = random_scores[len(random_scores) // 2] if random_scores else float("nan")
        costs = ", ".join(f"{k}={v:.4g}" for k, v in best["costs"].items())
        lines.append(f"EvolutionSearch [{name}]: best arch scores {best['score']:.4f} ({costs}); median of the "
                     f"{len(random_scores)} random archs of generation 0: {median:.4f} (held-out validation split)")
        if name in result.test_scores:
            lines.append(f"  best arch on the test split (inherited weights, BN re-calibrated): "
                         f"{result.test_scores[name]:.4f}")
        lines.append(f"  best arch: {json.dumps(best['arch'])}")
    return lines


def topk_rows(result: SearchResult) -> tuple[list[str], list[list[Any]]]:
    """The top-k table: its columns and, per run, its ``topk`` best legal records."""
    metrics = sorted({m for r in result.history for m in r["costs"]})
    rows = []
    for name, c in zip(result.run_names, result.constraints or [None]):
        legal = [r for r in result.history if c is None or c.satisfied(r["costs"])]
        for i, r in enumerate(top_k(legal, result.topk), 1):
            rows.append([name, i, round(r["score"], 6), *[r["costs"].get(m) for m in metrics], r["generation"],
                         json.dumps(r["arch"])])
    return ["constraint", "rank", "score", *metrics, "generation", "arch"], rows


def topk_markdown(result: SearchResult) -> str:
    """The top-k table as Markdown."""
    columns, rows = topk_rows(result)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(f"`{v}`" if k == "arch" else f"{v:g}" if isinstance(v, float) else str(v)
                                for k, v in zip(columns, row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _log(result: SearchResult, trainer: Trainer, out_dir: Path | None, files: dict[str, Path]) -> None:
    single = len(result.run_names) == 1
    metrics: dict[str, float] = {"search/candidates": float(len(result.history))}
    for name, r in result.best.items():
        prefix = "search/" if single else f"search/{name}/"
        metrics[f"{prefix}best_acc"] = r["score"]
        metrics.update({f"{prefix}best_{m}": v for m, v in r["costs"].items()})
    for logger in trainer.loggers:
        run = live_wandb_run(logger)
        if run is not None:
            _log_wandb(result, logger, run, out_dir, files)
        logger.log_metrics(metrics, step=trainer.global_step)


def _log_wandb(result: SearchResult, logger: Any, run: Any, out_dir: Path | None, files: dict[str, Path]) -> None:
    import wandb

    columns, rows = topk_rows(result)
    logger.log_table(key="search/topk", columns=columns, data=rows)
    if out_dir is not None and (out_dir / "search_pareto.png").is_file():
        logger.log_image(key="search/pareto", images=[str(out_dir / "search_pareto.png")])
    for name, path in files.items():
        artifact = wandb.Artifact(f"best_arch_{name}", type="arch", metadata=result.best[name]["costs"])
        artifact.add_file(str(path))
        run.log_artifact(artifact)
