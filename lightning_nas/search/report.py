"""What an evolution search leaves behind: its files in the run's own folder, the summary lines, the loggers.

Written by rank 0 at the end of :class:`~lightning_nas.callbacks.EvolutionSearch`: ``best_arch*.json`` (also copied
to the search's root as the latest answer), ``search_history.jsonl``, ``search_topk.md``, ``search_pareto.png``,
and the same to the trainer's loggers (a top-k table, the Pareto image and the best-arch artifact on W&B).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lightning.pytorch import Trainer
from tqdm.auto import tqdm

from lightning_nas.search.evolution import EvolutionConfig, EvolutionState, Record, top_k
from lightning_nas.search.output import next_command, publish_arch, run_folder

__all__ = ["SearchProgress", "summary_lines", "write_report"]


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


def write_report(search: Any, trainer: Trainer, space: Any, out_dir: Path | None) -> list[str]:
    """Write the files into a new run folder under ``out_dir`` (none if ``None``), log to the loggers.

    Returns:
        The summary lines, for the caller to print last (after the progress bars are gone).
    """
    files: dict[str, Path] = {}
    folder = None
    if out_dir is not None:
        folder = search.run_dir = run_folder(out_dir, "evolution")
        for i, (name, rec) in enumerate(search.best.items()):
            extra = {"test_acc": search.test_scores[name]} if name in search.test_scores else {}
            meta = {"score": rec["score"], "costs": rec["costs"], "constraint": name, "strategy": search.strategy,
                    **extra}
            # best_arch.json is the first constraint's answer (the one retrain.yaml reads by default)
            stems = [f"best_arch_{name}"] if len(search.runs) > 1 else []
            stems += ["best_arch"] if i == 0 else []
            for stem in stems:
                files.setdefault(name, publish_arch(rec["arch"], space, folder, out_dir, stem, announce=False, **meta))
        with open(folder / "search_history.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in search.history)
        (folder / "search_topk.md").write_text(_topk_markdown(search))
        _pareto_plot(search, folder / "search_pareto.png")
    _log(search, trainer, folder, files)
    lines = summary_lines(search)
    if out_dir is not None:
        lines.append(f"Outputs: {folder}. Retrain the best arch: {next_command(out_dir / 'best_arch.json')}")
    return lines


def summary_lines(search: Any) -> list[str]:
    """Per constraint: the best arch's score next to the median score of the random archs of generation 0."""
    lines = []
    for run in search.runs:
        best = search.best.get(run.name)
        if best is None:
            lines.append(f"EvolutionSearch [{run.name}]: no arch met the constraint")
            continue
        random_scores = sorted(r["score"] for r in run.history if r["generation"] == 0)
        median = random_scores[len(random_scores) // 2] if random_scores else float("nan")
        costs = ", ".join(f"{k}={v:.4g}" for k, v in best["costs"].items())
        lines.append(f"EvolutionSearch [{run.name}]: best arch scores {best['score']:.4f} ({costs}); median of the "
                     f"{len(random_scores)} random archs of generation 0: {median:.4f} (held-out validation split)")
        if run.name in search.test_scores:
            lines.append(f"  best arch on the test split (inherited weights, BN re-calibrated): "
                         f"{search.test_scores[run.name]:.4f}")
        lines.append(f"  best arch: {json.dumps(best['arch'])}")
    return lines


def _topk_rows(search: Any) -> tuple[list[str], list[list[Any]]]:
    metrics = sorted({m for r in search.history for m in r["costs"]})
    rows = []
    for run, c in zip(search.runs, search.constraints or [None]):
        legal = [r for r in search.history if c is None or c.satisfied(r["costs"])]
        for i, r in enumerate(top_k(legal, search.config.topk), 1):
            rows.append([run.name, i, round(r["score"], 6), *[r["costs"].get(m) for m in metrics], r["generation"],
                         json.dumps(r["arch"])])
    return ["constraint", "rank", "score", *metrics, "generation", "arch"], rows


def _topk_markdown(search: Any) -> str:
    columns, rows = _topk_rows(search)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(f"`{v}`" if k == "arch" else f"{v:g}" if isinstance(v, float) else str(v)
                                for k, v in zip(columns, row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _pareto_plot(search: Any, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metric = search.plot_metric
    fig = Figure(figsize=(6, 4.5))
    FigureCanvasAgg(fig)  # no pyplot: the process's backend stays untouched
    ax = fig.add_subplot()

    def x_of(r: Record, i: int) -> float:
        return r["costs"].get(metric, i)

    for run in search.runs:
        points = [(x_of(r, i), r["score"]) for i, r in enumerate(search.history) if r["constraint"] == run.name]
        ax.scatter(*zip(*points) if points else ([], []), s=10, alpha=0.5, label=run.name)
    front, best = [], -float("inf")
    for x, y in sorted((x_of(r, i), r["score"]) for i, r in enumerate(search.history)):
        if y > best:
            front.append((x, y))
            best = y
    if front:
        ax.step(*zip(*front), where="post", color="black", lw=1, label="Pareto front")
    for name, r in search.best.items():
        ax.scatter([x_of(r, search.history.index(r))], [r["score"]], marker="*", s=150, edgecolor="black",
                   label=f"best {name}")
    for c in search.constraints:
        for bound in (c.min, c.max):
            if bound is not None and c.metric == metric:
                ax.axvline(bound, ls="--", color="grey", lw=1)
    known = any(metric in r["costs"] for r in search.history)
    ax.set_xlabel(metric if known else "candidate")
    ax.set_ylabel("val accuracy (re-calibrated BN)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _log(search: Any, trainer: Trainer, out_dir: Path | None, files: dict[str, Path]) -> None:
    single = len(search.runs) == 1
    metrics: dict[str, float] = {"search/candidates": float(len(search.history))}
    for name, r in search.best.items():
        prefix = "search/" if single else f"search/{name}/"
        metrics[f"{prefix}best_acc"] = r["score"]
        metrics.update({f"{prefix}best_{m}": v for m, v in r["costs"].items()})
    for logger in trainer.loggers:
        if _is_live_wandb(logger):
            _log_wandb(search, logger, out_dir, files)
        logger.log_metrics(metrics, step=trainer.global_step)


def _is_live_wandb(logger: Any) -> bool:
    from lightning.pytorch.loggers import WandbLogger

    if not isinstance(logger, WandbLogger):
        return False
    run = logger.experiment
    return not getattr(run, "disabled", False) and type(run).__name__ != "RunDisabled"


def _log_wandb(search: Any, logger: Any, out_dir: Path | None, files: dict[str, Path]) -> None:
    import wandb

    columns, rows = _topk_rows(search)
    logger.log_table(key="search/topk", columns=columns, data=rows)
    if out_dir is not None and (out_dir / "search_pareto.png").is_file():
        logger.log_image(key="search/pareto", images=[str(out_dir / "search_pareto.png")])
    for name, path in files.items():
        artifact = wandb.Artifact(f"best_arch_{name}", type="arch", metadata=search.best[name]["costs"])
        artifact.add_file(str(path))
        logger.experiment.log_artifact(artifact)
