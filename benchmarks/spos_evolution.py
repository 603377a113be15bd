"""``EvolutionSearch`` throughput on a small SPOS supernet trained for a bit on digits.

The quickstart's supernet trains a few epochs with SPOS (uniform paths), then ``EvolutionSearch`` runs
at fit end as in ``recipes/quickstart.yaml`` (population 16, top-k 5, 6 mutations, 6 crossovers, a
MACs constraint, 640 calibration images (256 with ``--quick``), the whole 144-image validation split).
The search is timed as a whole (``EvolutionSearch.search``: data collection, evolution, scoring, the report files)
and in
its two scoring phases, by wrapping the ``recalibrate_bn`` and ``accuracy`` the callback calls.
Figures: candidates per second, and the share of the search's time in BN re-calibration, in scoring
and in everything else.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from typing import Any

from benchmarks._spos_digits import train_supernet
from benchmarks.common import Bench
from lightning_nas.callbacks import EvolutionSearch
from lightning_nas.callbacks import evolution_search as es_module


def timing(fn: Callable[..., Any], bucket: dict[str, float], key: str) -> Callable[..., Any]:
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            bucket[key] += time.perf_counter() - start
    return wrapped


def main(argv: list[str] | None = None) -> None:
    bench = Bench("spos_evolution", "EvolutionSearch throughput (candidates/s) on a small SPOS supernet trained "
                  "briefly on digits, and the time shares of BN re-calibration vs scoring.")
    args = bench.parse(argv)
    epochs, generations, calib = (1, 2, 256) if args.quick else (6, 6, 640)
    bucket = {"recalibrate_bn": 0.0, "accuracy": 0.0, "search": 0.0}
    es_module.recalibrate_bn = timing(es_module.recalibrate_bn, bucket, "recalibrate_bn")
    es_module.accuracy = timing(es_module.accuracy, bucket, "accuracy")
    with tempfile.TemporaryDirectory() as out:
        search = EvolutionSearch(population=16, topk=5, mutations=6, crossovers=6, generations=generations,
                                 calib_images=calib, constraints=[{"metric": "macs", "max": 6_000_000}],
                                 seed=args.seed, output_dir=out)
        search.search = timing(search.search, bucket, "search")  # called by on_train_end
        train_supernet(epochs, args.seed, callbacks=[search])
    n = len(search.history)
    total = bucket["search"]
    bench.settings.update({"space": "quickstart ShuffleNetSpace (width 0.25, depths 1-1-2-1)", "epochs": epochs,
                           "population": 16, "generations": generations, "calib_images": calib,
                           "val_images": 144, "constraint": "macs <= 6e6"})
    bench.figure("candidates", n)
    bench.figure("candidates_per_s", n / total)
    bench.figure("ms_per_candidate", 1e3 * total / n)
    bench.figure("recalibration_share_pct", 100 * bucket["recalibrate_bn"] / total)
    bench.figure("scoring_share_pct", 100 * bucket["accuracy"] / total)
    bench.figure("other_share_pct", 100 * (total - bucket["recalibrate_bn"] - bucket["accuracy"]) / total)
    bench.figure("best_acc", search.best[next(iter(search.best))]["score"] if search.best else float("nan"))
    bench.note("other: collecting the calibration/validation batches once, buffer restores, proposals and MACs "
               "lookups, and the report files (arch JSON, history, top-k table, Pareto plot).")
    bench.emit()


if __name__ == "__main__":
    main()
