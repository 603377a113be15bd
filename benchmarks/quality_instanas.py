"""InstaNAS search quality: the trained controller vs a random per-input policy of the same mean latency, and vs
the MobileNetV2 path, accuracy at latency on the test split.

Per seed ``s`` (the regime of ``benchmarks.quality_common``: digits at 16 px, its train/val/test splits):

1. **Search**: ``InstaNASModule`` with its defaults (official since issue 15: masked meta-graph training, plain
   SGD lr 5e-4 in the search's meta-graph epochs, ``−p′ log p′`` entropy, encouragement 0.8, reward 30 · R_T)
   on a small ``InstaNASSpace`` (``SPACE``), ``pretrain`` epochs of drop-path pre-training, then ``search``
   epochs of controller and meta-graph epochs in turn; no fine-tuning inside the module. The option latency
   table is timed once (batch 1, one thread) and shared by every seed.
2. **Four fine-tunes of the same searched meta-graph**, each ``finetune`` epochs by the same loop (the
   module's fine-tuning optimiser: SGD ``finetune_lr`` cosine to 0, momentum, conv/linear weight decay, masked
   execution), differing only in the policy each input gets:

   - ``search``: the controller's greedy policy of that input (what the module's fine-tuning stage and
     inference run);
   - ``random``: each option of each cell on with probability ``q``, drawn afresh per input, where ``q`` makes
     the expected table latency equal the controller's mean latency on the validation split;
   - ``marginal`` (a second, stronger baseline): each option on with the frequency the controller's greedy
     policy turns it on over the validation split, drawn afresh per input: the controller's static preferences
     without its per-input choice;
   - ``mbv2``: the MobileNetV2 path (option 0, MBConv 3×3 e6, in every cell; the space's ``L_mbv2``).
3. **Test**: each fine-tuned meta-graph scored on the test split with its own policies (random: fresh draws
   from a seeded generator), grouped execution, eval mode; latency = the table's mean over the test inputs.

``search_acc`` / ``random_acc`` feed the paired statistics (``quality_common.paired_stats``); the MobileNetV2
comparison has its own (``search_minus_mbv2_*``), with the latencies beside them: InstaNAS's reward pushes
latency towards the middle of ``[L_min, 0.5 L_mbv2]`` by the end of the search, so it is accuracy at a lower
latency, not at equal latency.
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer, seed_everything
from torch import Tensor
from torch.utils.data import DataLoader

from benchmarks._spos_digits import quiet
from benchmarks.common import Bench
from benchmarks.quality_common import (
    QualityData,
    Splits,
    add_data_arguments,
    load_splits,
    paired_stats,
    quality_figures,
    regime_from_args,
)
from lightning_nas.cost.option_latency import OptionLatency
from lightning_nas.modules import InstaNASModule
from lightning_nas.modules.optim import split_decay
from lightning_nas.spaces.instanas import InstaNASSpace

STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 2, 2), (6, 96, 1, 1))
SPACE = {"width_mult": 0.25, "head_channels": 128, "stages": STAGES}
FULL = {"seeds": 5, "pretrain": 40, "search": 40, "finetune": 15}
QUICK = {"seeds": 3, "pretrain": 1, "search": 2, "finetune": 1, "train_images": 64, "val_images": 64}
Policy = Callable[[Tensor, torch.Generator], Tensor]


def _extra(parser: argparse.ArgumentParser) -> None:
    add_data_arguments(parser)
    parser.add_argument("--seeds", type=int, default=None, help="seeds (default 5; --quick 3)")
    parser.add_argument("--pretrain", type=int, default=None, help="pre-training epochs")
    parser.add_argument("--search", type=int, default=None, help="search epochs (controller + meta-graph)")
    parser.add_argument("--finetune", type=int, default=None, help="fine-tuning epochs of each meta-graph copy")


def make_space(splits: Splits) -> InstaNASSpace:
    return InstaNASSpace(num_classes=splits.num_classes, input_size=splits.input_size, **SPACE)


def search(splits: Splits, batch_size: int, cfg: dict[str, Any], seed: int, cache: Path) -> InstaNASModule:
    """Pre-training and search (no fine-tuning) with the module's defaults; the fitted module."""
    seed_everything(seed, verbose=False)
    module = InstaNASModule(make_space(splits), pretrain_epochs=cfg["pretrain"], search_epochs=cfg["search"],
                            finetune_epochs=0, latency_cache=str(cache), seed=seed)
    with tempfile.TemporaryDirectory(prefix="quality_instanas_") as folder:
        trainer = Trainer(accelerator="cpu", devices=1, max_epochs=cfg["pretrain"] + cfg["search"], logger=False,
                          enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                          num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=folder)
        trainer.fit(module, datamodule=QualityData(splits, batch_size, seed=seed))
    return module


def expected_latency(table: OptionLatency, q: float) -> float:
    """Table latency expected of a policy with every option on independently with probability ``q``."""
    ms, forced = table.option_ms, table.forced
    nothing_on = (1.0 - q) ** ms.shape[1]  # a shape-changing cell then runs its forced BasicBlock
    return table.fixed_ms + q * float(ms.sum()) + nothing_on * float((ms * forced).sum())


def matching_density(table: OptionLatency, target_ms: float) -> float:
    """The ``q`` whose expected latency is nearest ``target_ms`` (grid of 0.001; latency need not be monotone)."""
    grid = [k / 1000 for k in range(1001)]
    return min(grid, key=lambda q: abs(expected_latency(table, q) - target_ms))


def finetune(space: InstaNASSpace, policy: Policy, splits: Splits, hp: Any, epochs: int, batch_size: int,
             seed: int, execution: str) -> InstaNASSpace:
    """The module's fine-tuning stage on ``policy``: SGD ``finetune_lr`` cosine to 0 per step, momentum,
    conv/linear weight decay, label smoothing; returns ``space`` in eval mode."""
    space.train()
    for p in space.parameters():
        p.requires_grad_(True)
    opt = torch.optim.SGD(split_decay(space, hp.weight_decay, conv_linear_only=True), lr=hp.finetune_lr,
                          momentum=hp.momentum)
    loader = QualityData(splits, batch_size, seed=seed).train_dataloader()
    steps = max(1, epochs * len(loader))
    gen = torch.Generator().manual_seed(seed + 1)
    step = 0
    for _ in range(epochs):
        for x, y in loader:
            for group in opt.param_groups:
                group["lr"] = hp.finetune_lr * 0.5 * (1 + math.cos(math.pi * step / steps))
            loss = F.cross_entropy(space.forward_policy(x, policy(x, gen), execution), y,
                                   label_smoothing=hp.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    return space.eval()


@torch.no_grad()
def score(space: InstaNASSpace, policy: Policy, data: DataLoader, table: OptionLatency, seed: int
          ) -> tuple[float, float]:
    """Accuracy and mean table latency (ms) of ``space`` under ``policy`` on ``data`` (grouped, eval mode)."""
    space.eval()
    gen = torch.Generator().manual_seed(seed)
    correct, latency = 0, []
    for x, y in data:
        p = policy(x, gen)
        correct += int((space.forward_policy(x, p, "grouped").argmax(1) == y).sum())
        latency.append(table.of(p))
    return correct / len(data.dataset), float(torch.cat(latency).mean())


def policies(module: InstaNASModule, q: float, marginals: Tensor) -> dict[str, Policy]:
    """The four policies compared: the controller's, uniform random at density ``q``, random with the controller's
    per-(cell, option) frequencies ``marginals``, and the MobileNetV2 path."""
    shape = tuple(marginals.shape)
    mbv2 = torch.zeros(shape)
    mbv2[:, 0] = 1.0

    def bernoulli(probs: Tensor) -> Policy:
        return lambda x, gen: (torch.rand(len(x), *shape, generator=gen) < probs).float()

    return {"search": lambda x, gen: module.policy(x), "random": bernoulli(torch.full(shape, q)),
            "marginal": bernoulli(marginals), "mbv2": lambda x, gen: mbv2.expand(len(x), *shape)}


def one_seed(splits: Splits, batch_size: int, cfg: dict[str, Any], seed: int, cache: Path) -> dict[str, Any]:
    module = search(splits, batch_size, cfg, seed, cache)
    table, data = module.latency, QualityData(splits, 200)
    with torch.no_grad():  # the controller's greedy policies on the validation split: latency and frequencies
        val_policy = torch.cat([module.policy(x) for x, _ in data.val_dataloader()])
    search_val_ms = float(table.of(val_policy).mean())
    q = matching_density(table, search_val_ms)
    out: dict[str, Any] = {"density": q, "search_val_latency_ms": search_val_ms}
    for name, policy in policies(module, q, val_policy.mean(0)).items():
        execution = "grouped" if name == "mbv2" else module.hparams.train_execution  # one path: the same numbers
        space = finetune(copy.deepcopy(module.space), policy, splits, module.hparams, cfg["finetune"], batch_size,
                         seed, execution)
        out[f"{name}_acc"], out[f"{name}_latency_ms"] = score(space, policy, data.test_dataloader(), table, seed + 2)
    with torch.no_grad():
        greedy = torch.cat([module.policy(x) for x, _ in data.test_dataloader()])
    out["search_options_on_per_cell"] = float(module.space.effective_policy(greedy).sum(2).mean())
    out["search_distinct_policies"] = len({tuple(p.flatten().tolist()) for p in greedy})
    return out


def main(argv: list[str] | None = None) -> None:
    bench = Bench("quality_instanas", "InstaNAS search quality: the trained controller's per-input policies vs random "
                  "per-input policies of the same mean latency (and vs the MobileNetV2 path), each on its own "
                  "fine-tuned copy of the searched meta-graph, test accuracy at latency, paired over seeds.")
    args = bench.parse(argv, _extra)
    quiet()
    cfg = dict(QUICK if args.quick else FULL)
    cfg.update({k: v for k, v in {"seeds": args.seeds, "pretrain": args.pretrain, "search": args.search,
                                  "finetune": args.finetune}.items() if v is not None})
    regime = regime_from_args(args)
    if args.quick:
        regime = replace(regime, train_images=cfg["train_images"], val_images=cfg["val_images"])
    splits = load_splits(regime)
    bench.settings.update(regime.settings())  # its data only: no arch is trained stand-alone here
    bench.settings["regime"] = regime.describe().split(";")[0] + "; no stand-alone training (the meta-graph's copies)"
    bench.settings.update({"method": "InstaNAS", "space": f"InstaNASSpace({SPACE})", **cfg,
                           "module": "InstaNASModule defaults", "batch_size": regime.batch_size,
                           "budget": f"{cfg['pretrain']} pre-training + {cfg['search']} search epochs (controller and "
                                     f"meta-graph in turn); {cfg['finetune']} fine-tuning epochs per policy"})
    seeds = [args.seed + i for i in range(cfg["seeds"])]
    with tempfile.TemporaryDirectory(prefix="quality_instanas_latency_") as folder:
        cache = Path(folder) / "latency.json"
        runs = [one_seed(splits, regime.batch_size, cfg, s, cache) for s in seeds]
        table = OptionLatency.load(cache)
    bench.settings["latency_table_ms"] = {"fixed": round(table.fixed_ms, 4), "min": round(table.min_ms, 4),
                                          "mbv2": round(table.mbv2_ms, 4), "max": round(table.max_ms, 4)}
    quality_figures(bench, seeds, [r["search_acc"] for r in runs], [r["random_acc"] for r in runs])
    mbv2 = paired_stats([r["search_acc"] for r in runs], [r["mbv2_acc"] for r in runs])
    bench.figure("mbv2_acc", [r["mbv2_acc"] for r in runs])
    bench.figure("search_minus_mbv2_points", mbv2["search_minus_random_points"])
    bench.figure("search_minus_mbv2_ci95", mbv2["ci95"])
    bench.figure("search_minus_mbv2_p_value", mbv2["p_value"])
    marginal = paired_stats([r["search_acc"] for r in runs], [r["marginal_acc"] for r in runs])
    bench.figure("marginal_acc", [r["marginal_acc"] for r in runs])
    bench.figure("search_minus_marginal_points", marginal["search_minus_random_points"])
    bench.figure("search_minus_marginal_ci95", marginal["ci95"])
    bench.figure("search_minus_marginal_p_value", marginal["p_value"])
    for key in ("search_latency_ms", "random_latency_ms", "marginal_latency_ms", "mbv2_latency_ms",
                "search_val_latency_ms", "density", "search_options_on_per_cell", "search_distinct_policies"):
        bench.figure(key, [r[key] for r in runs])
    bench.figure("search_latency_over_mbv2", statistics.median(r["search_latency_ms"] / r["mbv2_latency_ms"]
                                                               for r in runs))
    bench.note("Each policy gets its own copy of the same searched meta-graph, fine-tuned the same way "
               f"({cfg['finetune']} epochs) on its own policies; test accuracy with grouped execution in eval mode. "
               "Latencies are the table's (per option at batch 1, one thread, summed), mean over test inputs.")
    bench.note("random: every option on with probability `density`, chosen so that the expected table latency "
               "equals the controller's mean latency on the validation split. marginal: each option on with the "
               "frequency the controller's greedy policy turns it on over the validation split (its static preferences "
               "without the per-input choice), drawn afresh per input.")
    bench.emit()


if __name__ == "__main__":
    main()
