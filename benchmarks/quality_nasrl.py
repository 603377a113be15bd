"""NAS-RL search quality: the best of the controller's last N children vs the best of N uniformly random children.

Per seed ``s`` (the regime of ``benchmarks.quality_common``: digits at 16 px, its train/val/test splits):

1. **Search**: ``NASRLModule`` on ``LayerTokenSpace(num_layers=3, num_filters=[8, 12, 16, 24], strides=[1, 2])``
   (the digits recipe's space, skip connections searched) for ``steps`` controller steps of ``children``
   children, each trained from scratch by the module's own child loop on the regime's training split for
   ``child_epochs`` epochs and rewarded with (its best validation accuracy of the last ``reward_last_k``
   epochs)³; REINFORCE with an EMA baseline (``NASRLModule.update_controller``).
2. **Random**: ``N`` archs drawn uniformly (``space.sample``), each trained and scored by the same
   ``NASRLModule.train_child`` (same data, epochs, optimiser, reward) after the search.
3. **Choice**: the child with the highest reward among the controller's last ``N`` children (its last
   ``N / children`` steps) and among the ``N`` random ones: chosen on the validation split only.
4. **Test**: both chosen archs are trained stand-alone by ``quality_common.train_standalone`` (the regime's
   budget, fresh initialisation, the same training seeds for both) and scored on the test split; a seed's
   ``search_acc`` / ``random_acc`` is the mean test accuracy over the regime's ``repeats`` such trainings
   (``quality_common.standalone_runs``).

The random children get exactly the budget of the controller's last N children (same N, same child
training), but not the search's earlier children: the question is whether the distribution REINFORCE
ends at is better than the uniform one it starts from. ``last_mean_val`` / ``random_mean_val`` (the mean
validation accuracy of the two sets of N children) say whether the controller moved at all, with far less
noise than the best-of-N figure.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from dataclasses import replace
from typing import Any

import torch
from lightning.pytorch import Trainer

from benchmarks._spos_digits import quiet
from benchmarks.common import Bench
from benchmarks.quality_common import (
    QualityData,
    Regime,
    Splits,
    add_data_arguments,
    load_splits,
    quality_figures,
    regime_from_args,
    standalone_runs,
)
from lightning_nas.callbacks import ChildRecorder
from lightning_nas.modules import NASRLModule
from lightning_nas.modules.nasrl_data import NASRLData
from lightning_nas.spaces import LayerTokenSpace

SPACE = {"num_layers": 3, "num_filters": [8, 12, 16, 24], "strides": [1, 2]}
FULL = {"seeds": 8, "steps": 40, "children": 8, "last": 16, "child_epochs": 3, "reward_last_k": 2,
        "controller_lr": 5e-3, "baseline_decay": 0.9, "entropy_weight": 1e-4}
QUICK = {"seeds": 3, "steps": 3, "children": 4, "last": 4, "child_epochs": 1, "reward_last_k": 1,
         "controller_lr": 5e-3, "baseline_decay": 0.9, "entropy_weight": 1e-4}


def _extra(parser: argparse.ArgumentParser) -> None:
    add_data_arguments(parser)
    parser.add_argument("--seeds", type=int, default=None, help="seeds (default 8; --quick 3)")
    parser.add_argument("--steps", type=int, default=None, help="controller steps per search")
    parser.add_argument("--controller-lr", type=float, default=None)


def make_space(splits: Splits) -> LayerTokenSpace:
    return LayerTokenSpace(**SPACE, num_classes=splits.num_classes, input_size=splits.input_size)


def search(splits: Splits, regime: Regime, cfg: dict[str, Any], seed: int) -> tuple[NASRLModule, list[dict]]:
    """One NAS-RL search; the fitted module (its trainer still attached) and every child, in order."""
    module = NASRLModule(make_space(splits), controller_steps=cfg["steps"], children_per_step=cfg["children"],
                         seed=seed, lr=cfg["controller_lr"], child_epochs=cfg["child_epochs"],
                         reward_last_k=cfg["reward_last_k"], child_lr=regime.lr, child_momentum=regime.momentum,
                         child_weight_decay=regime.weight_decay, child_progress=False,
                         baseline_decay=cfg["baseline_decay"], entropy_weight=cfg["entropy_weight"])
    children: list[dict] = []

    class Recorder(ChildRecorder):
        def record(self, trainer: Trainer, pl_module: Any, batch: Any) -> None:
            super().record(trainer, pl_module, batch)
            children.extend(batch)

    with tempfile.TemporaryDirectory(prefix="quality_nasrl_") as folder:
        trainer = Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                          enable_progress_bar=False, enable_model_summary=False, default_root_dir=folder,
                          callbacks=[Recorder(dirpath=folder)])
        trainer.fit(module, datamodule=NASRLData(QualityData(splits, regime.batch_size, seed=seed)))
    return module, children


def random_children(module: NASRLModule, n: int, seed: int) -> list[dict]:
    """``n`` uniform archs trained and rewarded by the module's own child loop (indices after the search's)."""
    gen = torch.Generator().manual_seed(10_007 * seed + 1)
    out = []
    for k in range(n):
        arch = module.space.sample(gen)
        reward, score, params, _ = module.train_child(arch, module.hparams.controller_steps + 1, k)
        out.append({"arch": arch, "reward": reward, "score": score, "params": params})
    return out


def retrained_accuracy(space: LayerTokenSpace, arch: dict, splits: Splits, regime: Regime, seed: int) -> float:
    """The regime's stand-alone test accuracy of ``arch`` (mean over ``regime.repeats`` training seeds)."""
    return statistics.fmean(standalone_runs(lambda: space.export(arch), splits, regime, seed))


def one_seed(splits: Splits, regime: Regime, cfg: dict[str, Any], seed: int) -> dict[str, Any]:
    module, children = search(splits, regime, cfg, seed)
    last = children[-cfg["last"]:]
    rand = random_children(module, cfg["last"], seed)
    best_s, best_r = max(last, key=lambda c: c["reward"]), max(rand, key=lambda c: c["reward"])
    per_step = [statistics.fmean(c["score"] for c in children[i:i + cfg["children"]])
                for i in range(0, len(children), cfg["children"])]
    return {"search_acc": retrained_accuracy(module.space, best_s["arch"], splits, regime, seed),
            "random_acc": retrained_accuracy(module.space, best_r["arch"], splits, regime, seed),
            "search_val": best_s["score"], "random_val": best_r["score"],
            "last_mean_val": statistics.fmean(c["score"] for c in last),
            "random_mean_val": statistics.fmean(c["score"] for c in rand),
            "first_step_mean_val": per_step[0], "last_step_mean_val": per_step[-1],
            "search_params": best_s["params"], "random_params": best_r["params"],
            "search_arch": best_s["arch"], "random_arch": best_r["arch"]}


def main(argv: list[str] | None = None) -> None:
    bench = Bench("quality_nasrl", "NAS-RL search quality: the best of the controller's last N children vs the "
                  "best of N uniform random children trained identically (chosen on val), both retrained "
                  "stand-alone and scored on the test split, paired over seeds.")
    args = bench.parse(argv, _extra)
    quiet()
    cfg = dict(QUICK if args.quick else FULL)
    cfg.update({k: v for k, v in {"seeds": args.seeds, "steps": args.steps,
                                  "controller_lr": args.controller_lr}.items() if v is not None})
    regime = regime_from_args(args)
    if args.quick:
        regime = replace(regime, epochs=min(regime.epochs, 2), repeats=1)
    splits = load_splits(regime)
    bench.settings.update(regime.settings())
    bench.settings.update({"method": "NAS-RL", "space": f"LayerTokenSpace({SPACE})", **cfg,
                           "children_trained_per_seed": cfg["steps"] * cfg["children"] + cfg["last"],
                           "budget": f"{cfg['steps']} controller steps x {cfg['children']} children, "
                                     f"{cfg['child_epochs']} child epochs; best of the last {cfg['last']} vs best of "
                                     f"{cfg['last']} random children"})
    seeds = [args.seed + i for i in range(cfg["seeds"])]
    runs = [one_seed(splits, regime, cfg, s) for s in seeds]
    quality_figures(bench, seeds, [r["search_acc"] for r in runs], [r["random_acc"] for r in runs])
    for key in ("search_val", "random_val", "last_mean_val", "random_mean_val", "first_step_mean_val",
                "last_step_mean_val", "search_params", "random_params"):
        bench.figure(key, [r[key] for r in runs])
    bench.figure("last_minus_random_mean_val_points",
                 statistics.median(100 * (r["last_mean_val"] - r["random_mean_val"]) for r in runs))
    bench.settings["chosen_archs"] = {str(s): {"search": r["search_arch"], "random": r["random_arch"]}
                                      for s, r in zip(seeds, runs)}
    bench.note("search_acc / random_acc: test accuracy of the child with the best reward (validation split) among "
               f"the controller's last {cfg['last']} children / {cfg['last']} uniform children, retrained stand-alone "
               f"with the regime's budget (mean of {regime.repeats} training seeds, the same seeds for both).")
    bench.note("last_mean_val / random_mean_val: mean validation accuracy (search child budget) of those two sets of "
               "children; first_step_mean_val / last_step_mean_val: the controller's first and last step.")
    bench.emit()


if __name__ == "__main__":
    main()
