"""``LatencyTable`` on CPU: predicted vs measured end-to-end latency of exported archs.

A table is built for ``MobileNetSpace`` (32 px) with ``LatencyTable.build`` (every candidate of every
block timed as the plain layers it exports to, plus the fixed stem/head), then for 20 random archs the
prediction ``table.predict(arch)`` is compared with the measured latency of ``space.export(arch)``
in eval mode under ``inference_mode``. The measurement of the 20 nets is interleaved: each round times
every net (``measure_ms``, median of its repeats). On a shared machine other users' load comes and goes
between the table's build and the end-to-end timing, so both sides take the same statistic over repeated
measurements: the table is built ``builds`` times and each entry keeps its median (``median_table``), a
net's latency is its median over rounds. (An entry-wise minimum would bias the sum of ~25 entries low
against the minimum of one end-to-end time.) The error of the first build alone (``single_build``) is kept.
Each build is calibrated (``calibrate=5``: five whole networks, sampled with the table's own seed, not these
20, set the scale factor); the ``uncalibrated`` figures are the same tables divided back by their factor.
Figures: median and max absolute relative error ``|pred − meas| / meas`` (target median ≤ 10 %).
"""

from __future__ import annotations

import statistics

import torch

from benchmarks.common import Bench, spread
from lightning_nas.cost import LatencyTable, measure_ms
from lightning_nas.spaces import MobileNetSpace

SIZE, CLASSES, ARCHS = 32, 10, 20


def measured(space: MobileNetSpace, archs: list[dict], batch: int, rounds: int, repeats: int) -> list[list[float]]:
    """Each exported arch's ``measure_ms`` in every one of the interleaved rounds."""
    nets = [space.export(a).eval() for a in archs]
    x = torch.randn(batch, 3, SIZE, SIZE)
    per_round: list[list[float]] = [[] for _ in nets]
    for _ in range(rounds):
        for i, net in enumerate(nets):
            per_round[i].append(measure_ms(lambda net=net: net(x), "cpu", warmup=3, repeats=repeats))
    return per_round


def median_table(tables: list[LatencyTable]) -> LatencyTable:
    """Entry-wise median of several builds of the same table."""
    units = [{**u, "ms": {k: statistics.median(t.units[i]["ms"][k] for t in tables) for k in u["ms"]}}
             for i, u in enumerate(tables[0].units)]
    fixed = statistics.median(t.fixed_ms for t in tables)
    return LatencyTable(dict(tables[0].meta, builds=len(tables)), fixed, units)


def errors_pct(table: LatencyTable, archs: list[dict], actual: list[float]) -> tuple[dict, float]:
    predicted = [table.predict(a) for a in archs]
    signed = [(p - m) / m for p, m in zip(predicted, actual)]
    return spread(abs(e) for e in signed), 100 * statistics.mean(signed)


def main(argv: list[str] | None = None) -> None:
    bench = Bench("latency_table_error", "LatencyTable (CPU) predicted vs measured end-to-end latency of "
                  f"{ARCHS} random exported MobileNetSpace archs at 32 px.")
    args = bench.parse(argv)
    batches = (1,) if args.quick else (1, 8)
    repeats, rounds, builds = (8, 2, 2) if args.quick else (20, 5, 3)
    bench.settings.update({"space": "MobileNetSpace(num_classes=10, input_size=32)", "batches": list(batches),
                           "archs": ARCHS, "table_repeats": repeats, "measure_repeats": repeats,
                           "measure_rounds": rounds, "builds": builds})
    space = MobileNetSpace(CLASSES, SIZE)
    gen = torch.Generator().manual_seed(args.seed)
    archs = [space.sample(gen) for _ in range(ARCHS)]
    for batch in batches:
        tables = []
        for _ in range(builds):
            tables.append(LatencyTable.build(space, batch_size=batch, device="cpu", repeats=repeats))
        rounds_ms = measured(space, archs, batch, rounds, repeats)
        actual = [statistics.median(t) for t in rounds_ms]
        # the noise floor: how much one net's own latency moves between rounds on this machine
        bench.figure(f"batch{batch}.measurement_spread_pct",
                     100 * statistics.median((max(t) - min(t)) / statistics.median(t) for t in rounds_ms))
        s, signed = errors_pct(median_table(tables), archs, actual)
        bench.figure(f"batch{batch}.median_abs_rel_error_pct", 100 * s["median"])
        bench.figure(f"batch{batch}.max_abs_rel_error_pct", 100 * s["max"])
        bench.figure(f"batch{batch}.mean_signed_error_pct", signed)
        raw = median_table([t.scaled(1 / t.meta["calibration"]["scale"]) for t in tables])
        r, raw_signed = errors_pct(raw, archs, actual)
        bench.figure(f"batch{batch}.uncalibrated_median_abs_rel_error_pct", 100 * r["median"])
        bench.figure(f"batch{batch}.uncalibrated_mean_signed_error_pct", raw_signed)
        bench.figure(f"batch{batch}.calibration_scale_per_build", [t.meta["calibration"]["scale"] for t in tables])
        single, _ = errors_pct(tables[0], archs, actual)
        bench.figure(f"batch{batch}.single_build_median_abs_rel_error_pct", 100 * single["median"])
        bench.figure(f"batch{batch}.measured_ms_range", [min(actual), max(actual)])
        bench.figure(f"batch{batch}.table_fixed_ms_per_build", [t.fixed_ms for t in tables])
        bench.target(f"batch{batch}.median_abs_rel_error_pct", "<=", 10)
    bench.note("measurement_spread_pct: median over the 20 nets of (max - min) / median of a net's own latency "
               "across rounds — the noise floor of this machine; an error below it cannot be told apart from zero, "
               "and a calibration factor taken while the machine runs at another speed than during the end-to-end "
               "rounds carries that difference into every prediction.")
    bench.note("mean_signed_error_pct > 0: the table over-predicts (the sum of separately timed blocks carries "
               "each block's call overhead and cold caches); < 0: it under-predicts.")
    bench.emit()


if __name__ == "__main__":
    main()
