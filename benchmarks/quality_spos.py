"""Search quality of SPOS: evolution vs random search on the same supernet, and the supernet's ranking fidelity.

Everything runs in the search-quality regime of :mod:`benchmarks.quality_common` (digits at 16 px, a small
training set, stand-alone accuracy on the fixed test split as the mean of ``repeats`` training seeds).

1. **The regime's separation.** ``archs`` random archs of the space are trained stand-alone, ``repeats`` seeds
   each: ``arch_spread_points`` is the standard deviation across archs of their stand-alone accuracy,
   ``seed_noise_points`` the seed-to-seed standard deviation of that same measurement for one arch (the pooled
   within-arch standard deviation of single runs divided by ``√repeats``; the single-run figure is given too).
2. **Ranking fidelity.** For the same archs, the inherited-weight accuracy on the validation split (the supernet
   of the first seed, BatchNorm re-calibrated on fixed training batches: what ``EvolutionSearch`` scores).
   Kendall τ (scipy) between inherited and stand-alone accuracy.
3. **Evolution vs random search**, for each seed ``s``: a supernet trains with SPOS (uniform paths, seed ``s``);
   evolution (the library's ``evolve``, SPOS's operators) and random search (``evolve`` without mutations and
   crossovers) score the same number of candidates on the validation split with that supernet; the best arch of
   each is trained stand-alone the same way (seeds derived from ``s``) and scored on the test split. Paired
   statistics over seeds (``quality_common.paired_stats``). ``search_minus_random_arch_points`` puts the search's
   arch next to the median random arch of step 1 (what no search at all gives).

What the figures say (the committed run: noise σ 1.0, 16 seeds per measurement;
``benchmarks/results/quality_spos.json``): the regime separates archs (spread 2.25 points against a measurement
noise of 0.67: 3.35×), but the supernet's ranking carries no information about stand-alone accuracy (Kendall τ
−0.10 for seed 0's supernet, −0.18 to +0.17 over the five; the run with 8 seeds per measurement and a different
random stream gave 0.27 for seed 0 — the spread of τ between supernets is as large as τ). Evolution climbs its
objective (inherited validation accuracy 0 to +4.75 points over random search's best, median +3.5), and finds
archs no better stand-alone (median difference 0.0, p 0.38). The archs' stand-alone differences are overfitting:
over the 24 random archs, stand-alone accuracy *falls* with the mean channel scale (Kendall τ −0.35, p 0.018),
i.e. on 200 noisy images the narrower networks generalise better, while inherited accuracy (one supernet trained
on every path, BatchNorm re-calibrated) does not follow width (τ −0.01). A weight-sharing score cannot see how a
network overfits when trained alone; a limit of one-shot ranking at this scale, not a bug we found.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

import torch
from scipy.stats import kendalltau

from benchmarks._spos_digits import inherited_scorer, train_supernet
from benchmarks.common import Bench
from benchmarks.quality_common import (
    QualityData,
    Regime,
    Splits,
    add_data_arguments,
    load_splits,
    quality_figures,
    regime_from_args,
    spread_and_noise,
    standalone_runs,
)
from lightning_nas.search import EvolutionConfig, collect_batches, collect_inputs, evolve, top_k
from lightning_nas.spaces import ShuffleNetSpace

SPACE = {"width_mult": 0.25, "stage_depths": (1, 1, 2, 1), "head_channels": 256, "dropout": 0.0,
         "channel_search": True}
"""The quickstart's supernet with SPOS's channel search on: 5 blocks × 4 ops × 8 widths (3.4e7 archs)."""


def make_space(splits: Splits) -> ShuffleNetSpace:
    return ShuffleNetSpace(num_classes=splits.num_classes, input_size=splits.input_size, **SPACE)


def standalone_of(space: ShuffleNetSpace, arch: dict, splits: Splits, regime: Regime, seed: int) -> list[float]:
    """Test accuracies of ``arch`` exported and trained from scratch, one per repeat (:func:`standalone_runs`)."""
    return standalone_runs(lambda: space.export(arch), splits, regime, seed)


def search_pair(space: ShuffleNetSpace, score: Any, population: int, generations: int, seed: int
                ) -> dict[str, dict[str, Any]]:
    """Best arch (by inherited validation accuracy) of evolution and of random search at the same budget."""
    decisions = space.decisions()
    configs = {"evolution": EvolutionConfig(population, max(2, population // 3), population // 3, population // 3,
                                            0.1, generations),
               "random": EvolutionConfig(population, max(2, population // 3), 0, 0, 0.1, generations)}
    out = {}
    for name, config in configs.items():
        state = evolve(decisions, config, score, seed=1000 + seed)
        best = top_k(state.history, 1)[0]
        out[name] = {"arch": best["arch"], "score": best["score"], "scored": len(state.history)}
    return out


def supernet(splits: Splits, regime: Regime, epochs: int, seed: int, lr: float, calib_images: int) -> Any:
    """A SPOS supernet trained on the regime's training split; returns its inherited-accuracy scorer and space."""
    dm = QualityData(splits, regime.batch_size, seed=seed)
    module, _, _ = train_supernet(epochs, seed, lr=lr, datamodule=dm, space=make_space(splits))
    with torch.random.fork_rng(devices=[]):
        calib = collect_inputs(dm.calibration_dataloader(), calib_images, "cpu")
    val = collect_batches(dm.val_dataloader(), None, "cpu")
    return module.space, inherited_scorer(module.space, calib, val)


def regime_figures(bench: Bench, runs: Sequence[Sequence[float]], repeats: int) -> None:
    means = [statistics.fmean(r) for r in runs]
    sep = spread_and_noise(means, runs)
    single = sep["seed_noise_points"]
    noise = single / repeats**0.5
    bench.figure("arch_spread_points", sep["arch_spread_points"])
    bench.figure("seed_noise_points", noise)
    bench.figure("seed_noise_single_run_points", single)
    bench.figure("spread_over_noise", sep["arch_spread_points"] / noise)
    bench.target("spread_over_noise", ">=", 3)


def main(argv: list[str] | None = None) -> None:
    bench = Bench("quality_spos", "SPOS search quality: evolution vs random search at an equal number of scored "
                  "candidates on the same supernet, stand-alone test accuracy of the chosen archs paired over seeds; "
                  "Kendall tau of inherited vs stand-alone accuracy.")
    args = bench.parse(argv, extra=add_data_arguments)
    regime = regime_from_args(args)
    q = args.quick
    if q:
        regime = regime.smoke(repeats=2, images=100)
    n_archs, seeds = (4, [0, 1]) if q else (24, [0, 1, 2, 3, 4])
    sup_epochs, sup_lr, calib_images = (2, 0.1, 64) if q else (200, 0.1, 256)
    population, generations = (4, 2) if q else (8, 6)
    splits = load_splits(regime)
    bench.settings.update({"method": "SPOS", **regime.settings(),
                           "space": f"ShuffleNetSpace {SPACE}", "supernet": f"{sup_epochs} epochs, lr {sup_lr} cosine, "
                           f"batch {regime.batch_size}, uniform paths", "calib_images": calib_images,
                           "archs": n_archs, "population": population, "generations": generations,
                           "budget": f"{population * generations} scored candidates per search; supernet "
                                     f"{sup_epochs} epochs"})

    gen = torch.Generator().manual_seed(args.seed + 7)
    probe_space = make_space(splits)
    sample = [probe_space.sample(gen) for _ in range(n_archs)]
    runs = [standalone_of(probe_space, a, splits, regime, 10_000 + i) for i, a in enumerate(sample)]
    standalone = [statistics.fmean(r) for r in runs]
    regime_figures(bench, runs, regime.repeats)

    search_acc, random_acc, val_gap, tau_per_seed = [], [], [], []
    inherited: list[float] = []
    for s in seeds:
        space, score = supernet(splits, regime, sup_epochs, s, sup_lr, calib_images)
        scores = score(sample)
        inherited = inherited or scores
        tau_per_seed.append(float(kendalltau(scores, standalone)[0]))
        pair = search_pair(space, score, population, generations, s)
        val_gap.append(100 * (pair["evolution"]["score"] - pair["random"]["score"]))
        search_acc.append(statistics.fmean(standalone_of(space, pair["evolution"]["arch"], splits, regime, s)))
        random_acc.append(statistics.fmean(standalone_of(space, pair["random"]["arch"], splits, regime, s)))
        print(f"seed {s}: evolution {search_acc[-1]:.4f} random {random_acc[-1]:.4f}", flush=True)

    quality_figures(bench, seeds, search_acc, random_acc)
    tau, p = kendalltau(inherited, standalone)
    bench.figure("kendall_tau", float(tau))
    bench.figure("kendall_p_value", float(p))
    bench.target("kendall_tau", ">=", 0.5)
    bench.figure("kendall_tau_per_seed", tau_per_seed)
    bench.figure("inherited_acc", inherited)
    bench.figure("standalone_acc", standalone)
    median_random = statistics.median(standalone)
    bench.figure("search_minus_random_arch_points", 100 * (statistics.median(search_acc) - median_random))
    bench.figure("evolution_minus_random_val_points", val_gap)
    bench.note("search = evolution's best arch, random = random search's best arch, both by inherited accuracy on "
               "the validation split of the same supernet; both trained stand-alone with the same seeds; accuracy on "
               "the test split. search_minus_random_arch_points: the search's median against the median of the "
               "random archs (no search). evolution_minus_random_val_points: the two searches' own objective.")
    bench.note("The supernet trains 200 epochs (1,400 steps) because uniform path sampling starts slowly on digits: "
               "in a plain PyTorch loop (no Lightning, no library training code) the quickstart supernet stays at "
               "chance (loss 2.25-2.33 after 3 epochs at lr 0.01, 0.05 or 0.2) while one fixed path of the same "
               "supernet, with the same initialisation, reaches loss 0.78, as fast as its exported network; sampling "
               "only the first block already slows it (1.36). Weight-sharing interference, not a bug: the official "
               "schedule (150k iterations) amortises it. In this regime: 100 epochs give inherited accuracies of "
               "24-40 %, 200 epochs 62-78 %.")
    bench.emit()


if __name__ == "__main__":
    main()
