"""NAS-RL children per hour on one rank vs two (``ddp_spawn``): the same search, whole fits timed.

A short ``NASRLModule`` search on ``DigitsDataModule`` (``recipes/nasrl/digits.yaml``'s space:
``LayerTokenSpace(num_layers=3, num_filters=[8, 12, 16, 24], strides=[1, 2])``), ``controller_steps``
steps of ``children_per_step`` children, each child trained from scratch for one epoch of a few batches
and scored on a few validation batches. It runs as ``Trainer(accelerator="cpu", devices=1)`` and as
``Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn")`` (the strategy of the module's DDP test),
where rank ``r`` trains children ``r, r+2, …`` of each step.

- **Whole fit**: the wall time of ``Trainer(...)`` + ``fit`` in the calling process (for two ranks: the
  spawn of the workers, their imports and process-group setup included), after one untimed warm-up fit of
  each kind; children / hour = children / that time. 1-rank and 2-rank fits alternate their order round
  by round; the scaling efficiency ``(rate_2 / rate_1) / 2`` is taken per round.
- **Search loop**: the same from rank 0's ``on_train_start`` to its ``on_train_end`` (the ranks move in
  lockstep: each step all-gathers the rewards), i.e. without the start-up cost a longer search amortises.

Every rank runs ``--threads`` intra-op threads (``OMP_NUM_THREADS`` is set before the workers spawn).
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from benchmarks._spos_digits import quiet
from benchmarks.common import Bench, ratios, spread
from lightning_nas.datamodules import DigitsDataModule
from lightning_nas.modules import NASRLModule
from lightning_nas.modules.nasrl_data import NASRLData
from lightning_nas.spaces import LayerTokenSpace

BATCH = 64


class LoopTimer(Callback):
    """Rank 0 writes the search loop's wall time (and every rank its thread count) to ``folder``."""

    def __init__(self, folder: str) -> None:
        self.folder, self.start = folder, 0.0

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.start = time.perf_counter()

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        took = time.perf_counter() - self.start
        doc = {"loop_s": took, "threads": torch.get_num_threads(), "world": trainer.world_size,
               "children": len(pl_module.last_children) * trainer.global_step}
        Path(self.folder, f"rank{trainer.global_rank}.json").write_text(json.dumps(doc))


def search(devices: int, cfg: dict[str, Any], seed: int) -> dict[str, float]:
    """One whole NAS-RL fit; its wall time, search-loop time and children trained."""
    with tempfile.TemporaryDirectory(prefix="nasrl_scaling_") as folder:
        module = NASRLModule(LayerTokenSpace(num_layers=3, num_filters=[8, 12, 16, 24], strides=[1, 2]),
                             controller_steps=cfg["steps"], children_per_step=cfg["children"], seed=seed,
                             child_epochs=1, child_train_batches=cfg["train_batches"],
                             child_val_batches=cfg["val_batches"], reward_last_k=1, child_lr=0.05,
                             child_progress=False, baseline_decay=0.9)
        data = DigitsDataModule(batch_size=BATCH, seed=42)
        start = time.perf_counter()
        trainer = Trainer(accelerator="cpu", devices=devices, strategy="ddp_spawn" if devices > 1 else "auto",
                          max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                          enable_model_summary=False, default_root_dir=folder,
                          callbacks=[LoopTimer(folder)])
        trainer.fit(module, datamodule=NASRLData(data))
        took = time.perf_counter() - start
        docs = [json.loads(p.read_text()) for p in sorted(Path(folder).glob("rank*.json"))]
    rank0 = docs[0]
    if len(docs) != devices or rank0["children"] != cfg["steps"] * cfg["children"]:
        raise RuntimeError(f"unexpected search: {docs}")
    return {"fit_s": took, "loop_s": rank0["loop_s"], "children": rank0["children"],
            "threads": max(d["threads"] for d in docs)}


def main(argv: list[str] | None = None) -> None:
    bench = Bench("nasrl_scaling", "NAS-RL children per hour on one CPU rank vs two (ddp_spawn): the same short "
                  "search on digits, whole fits timed in interleaved rounds; scaling efficiency (rate_2/rate_1)/2.")
    args = bench.parse(argv)
    quiet()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the spawned ranks' intra-op threads, as this process's
    cfg = ({"steps": 2, "children": 4, "train_batches": 4, "val_batches": 1} if args.quick else
           {"steps": 2, "children": 4, "train_batches": 16, "val_batches": 4})
    rounds = 2 if args.quick else 4
    bench.settings.update({"space": "LayerTokenSpace(num_layers=3, num_filters=[8, 12, 16, 24], strides=[1, 2])",
                           "data": f"DigitsDataModule(batch_size={BATCH})", "controller_steps": cfg["steps"],
                           "children_per_step": cfg["children"], "child_epochs": 1,
                           "child_train_batches": cfg["train_batches"], "child_val_batches": cfg["val_batches"],
                           "rounds": rounds, "strategy_2_ranks": "ddp_spawn"})
    for devices in (1,) if args.quick else (1, 2):  # warm-up: imports, the digits tensors, a first process group
        search(devices, cfg, args.seed)
    runs: dict[int, list[dict[str, float]]] = {1: [], 2: []}
    for r in range(rounds):
        for devices in (1, 2) if r % 2 == 0 else (2, 1):
            runs[devices].append(search(devices, cfg, args.seed))
    bench.settings["threads_per_rank"] = {str(d): max(x["threads"] for x in v) for d, v in runs.items()}
    children = cfg["steps"] * cfg["children"]
    for key, label in (("fit_s", ""), ("loop_s", "loop_")):
        rate = {d: [3600.0 * children / x[key] for x in v] for d, v in runs.items()}
        eff = [e / 2 for e in ratios(rate[2], rate[1])]
        for d in (1, 2):
            bench.figure(f"{label}children_per_hour_{d}_rank{'s' if d > 1 else ''}", spread(rate[d])["median"])
        s = spread(eff)
        bench.figure(f"{label}scaling_efficiency", s["median"])
        bench.figure(f"{label}scaling_efficiency_min_max", [s["min"], s["max"]])
        bench.figure(f"{label}scaling_efficiency_iqr", [s["q1"], s["q3"]])
    bench.figure("fit_s_1_rank", statistics.median(x["fit_s"] for x in runs[1]))
    bench.figure("fit_s_2_ranks", statistics.median(x["fit_s"] for x in runs[2]))
    bench.note("children_per_hour_*: children / whole-fit wall time (Trainer + fit; for 2 ranks the ddp_spawn "
               "start-up: worker processes, imports, gloo process group), median over rounds; loop_*: the same over "
               "rank 0's on_train_start → on_train_end only. scaling_efficiency = (rate_2 / rate_1) / 2 per round, "
               "median with min-max and IQR.")
    bench.note(f"A lower bound: this machine has {os.cpu_count()} CPU cores shared with other jobs, so the two ranks "
               "(one thread each) compete with each other and with the rest of the machine, and this short search "
               "pays the spawn start-up on every fit; whole-fit efficiency is further cut by that fixed start-up, "
               "which a real search (hundreds of children) amortises.")
    bench.emit()


if __name__ == "__main__":
    main()
