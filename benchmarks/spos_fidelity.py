"""Search quality of SPOS on digits: inherited-weight vs stand-alone ranking, evolution vs random search.

1. The quickstart's ShuffleNet supernet (1,024 archs) trains with SPOS on digits (uniform paths).
2. For ``archs`` random archs: the inherited-weight accuracy (activate, BN re-calibrated on fixed
   training batches, top-1 on the held-out validation split: what ``EvolutionSearch`` scores) and the
   stand-alone accuracy (``space.export(arch)``, re-initialised with
   ``lightning_nas.modules.classification.reset_parameters``, trained from scratch for a short fixed
   budget, top-1 on the same split). Kendall τ between the two rankings (scipy).
3. Evolution vs random search at an equal budget of scored candidates (the library's ``evolve``;
   random search is ``evolve`` without mutations and crossovers), over a few seeds: best and median of
   the scored candidates' inherited accuracies.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable

import torch
import torch.nn.functional as F
from scipy.stats import kendalltau
from torch import nn

from benchmarks._spos_digits import search_data, train_supernet
from benchmarks.common import Bench, spread
from lightning_nas.modules.classification import reset_parameters
from lightning_nas.search import EvolutionConfig, accuracy, arch_key, evolve, recalibrate_bn
from lightning_nas.search.evaluate import restore_buffers, save_buffers


def inherited_scorer(space: nn.Module, calib: list, val: list) -> Callable[[list[dict]], list[float]]:
    """``score(archs) -> accuracies`` with the supernet's weights, cached by arch (scores are deterministic)."""
    trained = save_buffers(space)
    cache: dict[str, float] = {}

    def score(archs: list[dict]) -> list[float]:
        out = []
        for arch in archs:
            key = arch_key(arch)
            if key not in cache:
                restore_buffers(space, trained)
                space.activate(arch)
                recalibrate_bn(space, calib)
                cache[key] = accuracy(space, val)
            out.append(cache[key])
        return out

    return score


def standalone(space: nn.Module, arch: dict, train_loader: object, val: list, epochs: int, seed: int) -> float:
    """Top-1 on ``val`` of ``arch`` exported, re-initialised and trained from scratch for ``epochs`` epochs."""
    torch.manual_seed(seed)
    net = reset_parameters(space.export(arch)).train()
    steps = epochs * len(train_loader)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    for _ in range(epochs):
        for x, y in train_loader:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(net(x), y).backward()
            opt.step()
            schedule.step()
    return accuracy(net, val)


def search_comparison(space: nn.Module, score: Callable[[list[dict]], list[float]], seeds: int, population: int,
                      generations: int
                      ) -> dict[str, dict[str, float]]:
    """Best and median inherited accuracy of the candidates of evolution and random search, per seed."""
    decisions = space.decisions()
    configs = {"evolution": EvolutionConfig(population, max(2, population // 2), population // 3, population // 3,
                                            0.1, generations),
               "random": EvolutionConfig(population, max(2, population // 2), 0, 0, 0.1, generations)}
    out: dict[str, dict[str, list[float]]] = {k: {"best": [], "median": []} for k in configs}
    for seed in range(seeds):
        for name, config in configs.items():
            state = evolve(decisions, config, score, seed=1000 + seed)
            scores = [r["score"] for r in state.history]
            out[name]["best"].append(max(scores))
            out[name]["median"].append(statistics.median(scores))
    return {k: {m: statistics.mean(v) for m, v in d.items()} | {"best_per_seed": d["best"]} for k, d in out.items()}


def main(argv: list[str] | None = None) -> None:
    bench = Bench("spos_fidelity", "SPOS on digits: Kendall tau of inherited-weight vs stand-alone accuracy over "
                  "random archs, and evolution vs random search at an equal budget.")
    args = bench.parse(argv)
    q = args.quick
    epochs, archs, alone_epochs, calib_images = (2, 6, 1, 128) if q else (40, 12, 8, 640)
    seeds, population, generations = (1, 6, 2) if q else (3, 12, 4)
    bench.settings.update({"space": "quickstart ShuffleNetSpace (width 0.25, depths 1-1-2-1; 1,024 archs)",
                           "supernet_epochs": epochs, "supernet_lr": 0.2, "batch": 64, "archs": archs,
                           "standalone_epochs": alone_epochs, "standalone_optimizer": "SGD nesterov lr 0.1 cosine",
                           "calib_images": calib_images, "val_images": 144, "search_seeds": seeds,
                           "search_budget": population * generations})
    module, dm, _ = train_supernet(epochs, args.seed)
    space = module.space
    calib, val = search_data(dm, calib_images)
    score = inherited_scorer(space, calib, val)
    gen = torch.Generator().manual_seed(args.seed + 7)
    sample = [space.sample(gen) for _ in range(archs)]
    inherited = score(sample)
    alone = [standalone(space, a, dm.train_dataloader(), val, alone_epochs, args.seed) for a in sample]
    tau, p = kendalltau(inherited, alone)
    bench.figure("kendall_tau", float(tau))
    bench.figure("kendall_p_value", float(p))
    bench.figure("inherited_acc_median", spread(inherited)["median"])
    bench.figure("inherited_acc_min_max", [min(inherited), max(inherited)])
    bench.figure("standalone_acc_median", spread(alone)["median"])
    bench.figure("standalone_acc_min_max", [min(alone), max(alone)])
    result = search_comparison(space, score, seeds, population, generations)
    for name, r in result.items():
        bench.figure(f"{name}.best_acc_mean", r["best"])
        bench.figure(f"{name}.median_acc_mean", r["median"])
        bench.figure(f"{name}.best_acc_per_seed", r["best_per_seed"])
    bench.note("Accuracies are on the 144-image held-out validation split (one image = 0.69 points), so small "
               "differences are within noise; tau over a handful of archs has a wide confidence interval (p-value "
               "given). The supernet learns slowly with uniform path sampling: read tau against supernet_epochs.")
    bench.emit()


if __name__ == "__main__":
    main()
