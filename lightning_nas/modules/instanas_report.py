"""What ``InstaNASModule`` reports at the end of fit: per-sample latency, correctness and policy of a
validation pass (``ValidationRecord``, merged over ranks), and ``write_report``'s files: the
accuracy-vs-latency summary, the latency and option-usage plots, and the easiest and hardest inputs (drawn
without pyplot, see :mod:`lightning_nas.search.report`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule
from torch import Tensor

from lightning_nas.cost.option_latency import OptionLatency
from lightning_nas.search.report import live_wandb_run, new_figure, save_figure

__all__ = ["ValidationRecord", "write_report"]


class ValidationRecord:
    """Per-sample latency, correctness and policy of a validation pass, and its easiest/hardest inputs."""

    def __init__(self, num_examples: int = 8) -> None:
        self.k = num_examples
        self.reset()

    def reset(self) -> None:
        self.latency: list[Tensor] = []
        self.correct: list[Tensor] = []
        self.policy: list[Tensor] = []
        self.easy: tuple[Tensor, Tensor] | None = None  # (latencies, images), lowest first
        self.hard: tuple[Tensor, Tensor] | None = None  # highest first
        self.merged: dict[str, Tensor] = {}

    @property
    def ready(self) -> bool:
        return bool(self.merged) and len(self.merged["latency"]) > 0

    def add(self, x: Tensor, latency: Tensor, correct: Tensor, policy: Tensor) -> None:
        latency, images = latency.float().cpu(), x.detach().float().cpu()
        self.latency.append(latency)
        self.correct.append(correct.cpu())
        self.policy.append(policy.detach().bool().cpu())
        self.easy = _keep(self.easy, latency, images, self.k, largest=False)
        self.hard = _keep(self.hard, latency, images, self.k, largest=True)

    def gather(self, module: LightningModule) -> None:
        """Merge the ranks' records (every rank must call it); the result is in ``merged``."""
        if not self.latency:
            self.merged = {}
            return
        local = {"latency": torch.cat(self.latency), "correct": torch.cat(self.correct).float(),
                 "policy": torch.cat(self.policy).float(), "easy_ms": self.easy[0], "easy": self.easy[1],
                 "hard_ms": self.hard[0], "hard": self.hard[1]}
        if module.trainer is None or module.trainer.world_size == 1:
            self.merged = local
            return
        merged = {k: _gather_rows(module, v) for k, v in local.items()}
        for side, largest in (("easy", False), ("hard", True)):
            order = torch.argsort(merged[f"{side}_ms"], descending=largest)[: self.k]
            merged[f"{side}_ms"], merged[side] = merged[f"{side}_ms"][order], merged[side][order]
        self.merged = merged


def _keep(kept: tuple[Tensor, Tensor] | None, latency: Tensor, images: Tensor, k: int,
          largest: bool) -> tuple[Tensor, Tensor]:
    if kept is not None:
        latency, images = torch.cat([kept[0], latency]), torch.cat([kept[1], images])
    order = torch.argsort(latency, descending=largest, stable=True)[:k]
    return latency[order], images[order]


def _gather_rows(module: LightningModule, t: Tensor) -> Tensor:
    """Concatenate a tensor's rows over the ranks (rows may differ in number: padded, then trimmed)."""
    n = torch.tensor(len(t), device=module.device)
    sizes = module.all_gather(n).flatten().tolist()
    padded = torch.zeros((max(sizes), *t.shape[1:]), dtype=t.dtype, device=module.device)
    padded[: len(t)] = t.to(module.device)
    gathered = module.all_gather(padded).cpu()
    return torch.cat([gathered[r, :s] for r, s in enumerate(sizes)])


def write_report(folder: Path, record: ValidationRecord, table: OptionLatency, option_names: Any,
                 loggers: Any = ()) -> dict[str, Any]:
    """Accuracy vs mean latency, the latency and option-usage distributions, and easy/hard inputs, as files."""
    m = record.merged
    latency, policy = m["latency"].double(), m["policy"]
    summary = {
        "samples": len(latency), "accuracy": float(m["correct"].mean()), "mean_latency_ms": float(latency.mean()),
        "median_latency_ms": float(latency.median()), "mbv2_latency_ms": table.mbv2_ms,
        "min_latency_ms": table.min_ms, "max_latency_ms": table.max_ms,
        "speedup_vs_mbv2": table.mbv2_ms / float(latency.mean()),
        "distinct_policies": len({tuple(p.flatten().tolist()) for p in policy.bool()}),
        "easy_latency_ms": m["easy_ms"].tolist(), "hard_latency_ms": m["hard_ms"].tolist(),
        "latency_table": {"batch_size": table.meta.get("batch_size"), "threads": table.meta.get("threads")},
    }
    folder.mkdir(parents=True, exist_ok=True)
    usage = policy.mean(0)
    files = _plots(folder, latency, usage, list(option_names), m, table.mbv2_ms)
    summary["files"] = [str(f) for f in files]
    (folder / "instanas_summary.json").write_text(json.dumps(summary, indent=1))
    for logger in loggers:
        _log_wandb(logger, latency, usage, files, summary)
    return summary


def _plots(folder: Path, latency: Tensor, usage: Tensor, options: list[str], m: dict[str, Tensor],
           mbv2_ms: float) -> list[Path]:
    files = [folder / "instanas_latency_hist.png", folder / "instanas_option_usage.png",
             folder / "instanas_easy_hard.png"]
    fig = new_figure(6, 3.5)
    ax = fig.add_subplot()
    ax.hist(latency.numpy(), bins=30)
    ax.axvline(mbv2_ms, color="k", linestyle="--", label="MobileNetV2 path")
    ax.set(xlabel="latency per input (ms, table)", ylabel="inputs", title="chosen sub-networks")
    ax.legend()
    save_figure(fig, files[0], dpi=80)
    fig = new_figure(4, 6)
    ax = fig.add_subplot()
    im = ax.imshow(usage.numpy(), aspect="auto", vmin=0, vmax=1, cmap="viridis")
    ax.set(xticks=range(len(options)), yticks=range(len(usage)), xlabel="option", ylabel="cell",
           title="option usage")
    ax.set_xticklabels(options, rotation=45)
    fig.colorbar(im, ax=ax)
    save_figure(fig, files[1], dpi=80)
    _grid(files[2], m)
    return files


def _grid(path: Path, m: dict[str, Tensor]) -> None:
    k = max(len(m["easy"]), 1)
    fig = new_figure(1.6 * k, 3.8)
    axes = fig.subplots(2, k, squeeze=False)
    for row, side in enumerate(("easy", "hard")):
        for j in range(k):
            ax = axes[row][j]
            ax.axis("off")
            if j < len(m[side]):
                img = m[side][j]
                lo, hi = img.amin((1, 2), keepdim=True), img.amax((1, 2), keepdim=True)
                ax.imshow(((img - lo) / (hi - lo + 1e-8)).permute(1, 2, 0).clamp(0, 1).numpy())
                ax.set_title(f"{side} {float(m[f'{side}_ms'][j]):.2f} ms", fontsize=7)
    save_figure(fig, path, dpi=80)


def _log_wandb(logger: Any, latency: Tensor, usage: Tensor, files: list[Path], summary: dict[str, Any]) -> None:
    run = live_wandb_run(logger)
    if run is None:
        return
    import wandb

    run.log({"instanas/latency_ms": wandb.Histogram(latency.numpy()),
             "instanas/option_usage": wandb.Image(str(files[1])), "instanas/easy_hard": wandb.Image(str(files[2])),
             "instanas/accuracy": summary["accuracy"], "instanas/mean_latency_ms": summary["mean_latency_ms"]})
