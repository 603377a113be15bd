"""How many BatchNorm re-calibration (and validation) images the candidate ranking of a SPOS search needs (issue 17).

The quickstart's supernet (``recipes/quickstart.yaml``: ShuffleNet width 0.25, depths 1-1-2-1, 4 ops × 5 blocks)
trains with SPOS on digits for the recipe's 30 epochs (``_spos_digits.train_supernet``). ``candidates`` distinct archs
are drawn (seeded) and each is scored as ``EvolutionSearch`` scores it (trained buffers restored, arch activated,
BatchNorm re-calibrated, top-1 on the validation split; ``_spos_digits.inherited_scorer``) under several protocols:

- **reference** (``ref_a``): all training images of the datamodule in whole batches of 64 (1,280 of the 1,293; the
  library's ``calibration_dataloader``, the batches ``EvolutionSearch`` would take) and the whole validation split.
  ``ref_b`` is the same protocol with other batches drawn (a seeded permutation of the training images with its own
  augmentation): ``reference_self_tau`` = τ(ref_a, ref_b) is the protocol's own noise.
- **calibration images** ``n``: draw 0 is the first ``n`` images of the library's calibration loader (exactly
  ``EvolutionSearch(calib_images=n)``, a subset of the reference's images); draws 1.. are the first ``n`` of other
  seeded permutations (independent of the reference's batches). Calibration batch ``min(64, n)``.
- **calibration batch size** at 640 images (the quickstart's ``calib_images``), draw 0: batches of 16 … 640.
- **validation images**: the reference's calibration, top-1 on seeded random subsets of the validation split.

Figures: Kendall τ-b (scipy; accuracies on 144 images tie often, τ-b accounts for it) of each protocol's scores
against ``ref_a`` (median over draws and the worst draw), the mean absolute score change in points, the top-1 regret
(``ref_a``'s score of the protocol's best candidate below ``ref_a``'s best, points) and the top-5 overlap; the
smallest calibration count whose τ reaches 0.95 (issue 17's target) and the smallest reaching the reference's own
self-τ; seconds per candidate by calibration count and batch (interleaved rounds, ``benchmarks/common.py``; the
median and its spread, context only: the figures that matter here are τ).
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch
from scipy.stats import kendalltau
from torch import Tensor

from benchmarks._spos_digits import BATCH, inherited_scorer, train_supernet
from benchmarks.common import Bench, interleaved, spread
from lightning_nas.search import accuracy, arch_key, collect_batches, collect_inputs, recalibrate_bn
from lightning_nas.search.evaluate import restore_buffers, save_buffers

TARGET_TAU = 0.95


def full_settings(quick: bool) -> dict[str, Any]:
    if quick:
        return {"epochs": 1, "candidates": 8, "ref_images": 256, "calib_images": [32, 64, 128], "draws": 2,
                "batch_images": 128, "calib_batches": [32, 128], "val_images": [32, 64], "val_draws": 2,
                "rounds": 2}
    return {"epochs": 30, "candidates": 50, "ref_images": 1280, "calib_images": [32, 64, 128, 256, 640], "draws": 3,
            "batch_images": 640, "calib_batches": [16, 32, 128, 640], "val_images": [32, 64, 96], "val_draws": 3,
            "rounds": 5}


def draw_pool(dm: Any, images: int, draw: int) -> Tensor:
    """``images`` training images as one tensor: draw 0 is the library's calibration loader (what
    ``EvolutionSearch`` re-calibrates on), draw ``k`` a permutation of the training part seeded by ``k`` with its own
    augmentation (the default CPU generator seeded by ``k``; the global RNG is left as it was)."""
    if draw == 0:
        return torch.cat(collect_inputs(dm.calibration_dataloader(), images, "cpu"))[:images]
    data = dm.train_dataset
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1000 + draw)
        order = torch.randperm(len(data))[:images].tolist()
        return torch.stack([data[i][0] for i in order])


def batches_of(pool: Tensor, images: int, batch: int) -> list[Tensor]:
    """The first ``images`` of ``pool`` in batches of ``batch`` (``collect_inputs``'s re-batching: whole batches)."""
    return collect_inputs([pool], images, "cpu", batch_size=batch)


def tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall τ-b; NaN when either side is constant (a supernet still at chance)."""
    if len(set(a)) < 2 or len(set(b)) < 2:
        return float("nan")
    return float(kendalltau(a, b)[0])


def best_first(scores: Sequence[float]) -> list[int]:
    """Candidate indices best first, ties by draw order (``search.top_k``'s rule)."""
    return sorted(range(len(scores)), key=lambda i: -scores[i])


def agreement(scores: Sequence[float], ref: Sequence[float]) -> dict[str, float]:
    mine, theirs = best_first(scores), best_first(ref)
    return {"tau": tau(scores, ref),
            "mean_abs_diff_points": 100 * statistics.fmean(abs(a - b) for a, b in zip(scores, ref, strict=True)),
            "top1_regret_points": 100 * (ref[theirs[0]] - ref[mine[0]]),
            "top1_same": float(ref[mine[0]] == ref[theirs[0]]),
            "top5_overlap": len(set(mine[:5]) & set(theirs[:5])) / 5}


def val_subsets(val: list[tuple[Tensor, Tensor]], sizes: Sequence[int], draws: int) -> dict[str, list]:
    """``{"val<n>_d<k>": batches}``: seeded random subsets of the validation split, in batches of the loader's size."""
    x = torch.cat([b[0] for b in val])
    y = torch.cat([b[1] for b in val])
    out = {}
    for n in sizes:
        for k in range(draws):
            pick = torch.randperm(len(y), generator=torch.Generator().manual_seed(100 * n + k))[:n]
            out[f"val{n}_d{k}"] = list(zip(x[pick].split(BATCH), y[pick].split(BATCH), strict=True))
    return out


def score_val_subsets(space: Any, archs: list[dict], calib: list[Tensor], vals: dict[str, list]
                      ) -> dict[str, list[float]]:
    """Each candidate re-calibrated once on ``calib`` (as ``inherited_scorer`` does), top-1 on every subset."""
    trained = save_buffers(space)
    out: dict[str, list[float]] = {k: [] for k in vals}
    for arch in archs:
        restore_buffers(space, trained)
        space.activate(arch)
        recalibrate_bn(space, calib)
        for key, batches in vals.items():
            out[key].append(accuracy(space, batches))
    restore_buffers(space, trained)
    return out


def per_candidate_times(space: Any, archs: list[dict], protocols: dict[str, list[Tensor]], val: list, rounds: int
                        ) -> dict[str, list[float]]:
    """Seconds to score one candidate under each protocol, interleaved; round ``r`` scores the same candidate under
    every protocol (fresh scorers: no cached score)."""
    fns: dict[str, Callable[[], Any]] = {}
    for label, calib in protocols.items():
        score = inherited_scorer(space, calib, val)
        queue = iter(archs)
        fns[label] = lambda score=score, queue=queue: score([next(queue)])
    return interleaved(fns, rounds=rounds, reps=1, warmup=1)


def smallest(taus: dict[str, float], bound: float) -> int | None:
    """The smallest calibration count whose τ reaches ``bound``, if one does."""
    hits = [int(n) for n, t in taus.items() if t == t and t >= bound]
    return min(hits) if hits else None


def main(argv: list[str] | None = None) -> None:
    bench = Bench("calibration_ranking", "How many BatchNorm re-calibration (and validation) images the candidate "
                  "ranking of a trained SPOS supernet needs: Kendall tau of candidate scores against the reference "
                  "protocol (all training images, the whole validation split), and seconds per candidate.")
    args = bench.parse(argv)
    cfg = full_settings(args.quick)
    module, dm, _ = train_supernet(cfg["epochs"], args.seed)
    space = module.space
    trained = save_buffers(space)

    gen = torch.Generator().manual_seed(args.seed + 17)
    archs: dict[str, dict] = {}
    while len(archs) < cfg["candidates"]:
        arch = space.sample(gen)
        archs.setdefault(arch_key(arch), arch)
    cands = list(archs.values())

    val = collect_batches(dm.val_dataloader(), None, "cpu")
    val_images = sum(len(y) for _, y in val)
    ref_n = cfg["ref_images"]
    pools = {k: draw_pool(dm, ref_n, k) for k in range(max(cfg["draws"], 2))}
    protocols: dict[str, list[Tensor]] = {"ref_a": batches_of(pools[0], ref_n, BATCH),
                                          "ref_b": batches_of(pools[1], ref_n, BATCH)}
    for n in cfg["calib_images"]:
        for k in range(cfg["draws"]):
            protocols[f"calib{n}_d{k}"] = batches_of(pools[k], n, min(BATCH, n))
    m = cfg["batch_images"]
    for b in cfg["calib_batches"]:
        protocols[f"calib{m}_b{b}"] = batches_of(pools[0], m, b)

    scores: dict[str, list[float]] = {}
    for label, calib in protocols.items():
        restore_buffers(space, trained)
        scores[label] = inherited_scorer(space, calib, val)(cands)
        print(f"{label}: scored", file=sys.stderr, flush=True)
    restore_buffers(space, trained)
    vals = val_subsets(val, cfg["val_images"], cfg["val_draws"])
    scores.update(score_val_subsets(space, cands, protocols["ref_a"], vals))
    ref = scores["ref_a"]
    agree = {label: agreement(s, ref) for label, s in scores.items() if label != "ref_a"}

    def by_count(sizes: Sequence[int], draws: int, fmt: str, key: str, how: Callable[[list[float]], float]
                 ) -> dict[str, float]:
        return {str(n): how([agree[fmt.format(n=n, k=k)][key] for k in range(draws)]) for n in sizes}

    counts, draws = cfg["calib_images"], cfg["draws"]
    tau_med = by_count(counts, draws, "calib{n}_d{k}", "tau", statistics.median)
    self_tau = agree["ref_b"]["tau"]
    tau_med[str(ref_n)] = self_tau  # all training images, other batches: the reference's own noise
    bench.figure("reference_self_tau", self_tau)
    bench.figure("kendall_tau_by_calib_images", tau_med)
    bench.figure("kendall_tau_min_by_calib_images", by_count(counts, draws, "calib{n}_d{k}", "tau", min))
    bench.figure("kendall_tau_library_draw_by_calib_images",
                 {str(n): agree[f"calib{n}_d0"]["tau"] for n in counts})
    bench.figure("smallest_calib_images_tau_095", smallest(tau_med, TARGET_TAU))
    bench.figure("smallest_calib_images_tau_self", smallest({k: v for k, v in tau_med.items() if k != str(ref_n)},
                                                            self_tau - 1e-9))
    bench.figure(f"kendall_tau_calib{m}", tau_med.get(str(m), float("nan")))
    bench.target(f"kendall_tau_calib{m}", ">=", TARGET_TAU)
    bench.figure("mean_abs_diff_points_by_calib_images",
                 {**by_count(counts, draws, "calib{n}_d{k}", "mean_abs_diff_points", statistics.median),
                  str(ref_n): agree["ref_b"]["mean_abs_diff_points"]})
    bench.figure("top1_regret_points_by_calib_images",
                 {**by_count(counts, draws, "calib{n}_d{k}", "top1_regret_points", statistics.median),
                  str(ref_n): agree["ref_b"]["top1_regret_points"]})
    bench.figure("top1_same_share_by_calib_images",
                 {**by_count(counts, draws, "calib{n}_d{k}", "top1_same", statistics.fmean),
                  str(ref_n): agree["ref_b"]["top1_same"]})
    bench.figure("top5_overlap_by_calib_images",
                 {**by_count(counts, draws, "calib{n}_d{k}", "top5_overlap", statistics.median),
                  str(ref_n): agree["ref_b"]["top5_overlap"]})
    bench.figure(f"kendall_tau_by_calib_batch_at_{m}",
                 {str(b): agree[f"calib{m}_b{b}"]["tau"] for b in cfg["calib_batches"]}
                 | {str(BATCH): agree[f"calib{m}_d0"]["tau"]})
    bench.figure("kendall_tau_by_val_images",
                 {**by_count(cfg["val_images"], cfg["val_draws"], "val{n}_d{k}", "tau", statistics.median),
                  str(val_images): 1.0})
    bench.figure("kendall_tau_min_by_val_images",
                 by_count(cfg["val_images"], cfg["val_draws"], "val{n}_d{k}", "tau", min))
    bench.figure("reference_scores", {"min": min(ref), "median": statistics.median(ref), "max": max(ref),
                                      "distinct": len(set(ref))})

    timing = {str(n): protocols[f"calib{n}_d0"] for n in counts} | {str(ref_n): protocols["ref_a"]}
    timing |= {f"{m}_b{b}": protocols[f"calib{m}_b{b}"] for b in cfg["calib_batches"]}
    restore_buffers(space, trained)
    times = per_candidate_times(space, cands, timing, val, cfg["rounds"])
    restore_buffers(space, trained)
    med = {k: spread(v) for k, v in times.items()}
    bench.figure("s_per_candidate_by_calib_images", {str(n): med[str(n)]["median"] for n in [*counts, ref_n]})
    bench.figure("s_per_candidate_min_max_by_calib_images",
                 {str(n): [med[str(n)]["min"], med[str(n)]["max"]] for n in [*counts, ref_n]})
    bench.figure(f"s_per_candidate_by_calib_batch_at_{m}",
                 {str(b): med[f"{m}_b{b}"]["median"] for b in cfg["calib_batches"]}
                 | {str(BATCH): med[str(m)]["median"]})

    bench.settings.update({
        "space": "quickstart ShuffleNetSpace (width 0.25, depths 1-1-2-1, 1,024 archs)",
        "supernet": f"SPOS, {cfg['epochs']} epochs, lr 0.2 cosine, batch {BATCH}, uniform paths, digits",
        "candidates": len(cands), "reference": f"{ref_n} calibration images (batch {BATCH}), {val_images} validation",
        "calib_images": counts, "draws": draws, "calib_batches_at": {m: cfg["calib_batches"]},
        "val_images": cfg["val_images"], "val_draws": cfg["val_draws"], "timing_rounds": cfg["rounds"],
        "tau": "scipy.stats.kendalltau (tau-b)"})
    bench.note("kendall_tau_by_calib_images: median over draws of tau(scores with n calibration images, reference); "
               f"the entry {ref_n} is reference_self_tau (all training images, other batches drawn). Draw 0 "
               "(kendall_tau_library_draw_by_calib_images) is what EvolutionSearch(calib_images=n) uses: the first n "
               "images of the reference's own loader; draws 1.. are independent of the reference's batches.")
    bench.note("Scores are top-1 on 144 validation images, so many candidates tie (reference_scores.distinct "
               "values among the candidates); tau-b counts ties, and a one-image flip on a tied pair moves tau. "
               "When reference_self_tau is below 0.95 the target is beyond the protocol's own noise: "
               "smallest_calib_images_tau_self is then the figure to read.")
    bench.note("Times are context only (1 thread on a shared 2-core machine, other benchmarks running); "
               "s_per_candidate includes the 144-image validation pass.")
    bench.emit()


if __name__ == "__main__":
    main()
