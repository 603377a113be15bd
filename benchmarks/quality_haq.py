"""Search quality of HAQ: the found policy vs random policies at the same budget, and vs uniform bits at equal cost.

Everything runs in the search-quality regime of :mod:`benchmarks.quality_common` (digits at 16 px, a small
training set, the fixed test split reported only).

For each seed ``s``:

1. **The network.** A small MobileNetV2-style network (``MobileNetSpace`` exported with every block MBConv 3×3
   expand 6, MobileNetV2's block: depthwise and pointwise layers of many shapes) trains in float on the regime's
   training split with the regime's stand-alone recipe (seed ``s``).
2. **The budget.** ``BitSerialAccelerator("edge")`` latency; the budget is the cost of uniform ``uniform_bits``
   bits (first and last layer at 8 bits, as the search pins them) over the all-8-bit cost, so every policy must be
   as fast as uniform ``uniform_bits`` bits.
3. **HAQ** (``HAQModule`` with its defaults: official quantizer, one calibration batch, each episode fine-tuned for
   one epoch over the training split with SGD lr 1e-3, reward from that fine-tune's running top-1, DDPG with 20
   warm-up episodes of random actions) runs ``episodes`` episodes; its answer is the best-rewarded policy.
4. **Random search**: the same ``HAQModule`` with every episode a warm-up episode (uniform random actions → the
   same budget walk, calibration, fine-tune and reward), the same number of episodes and the same agent seed (its
   first 20 policies are HAQ's warm-up policies); its answer is its best-rewarded policy.
5. **The final fine-tune**, the same for HAQ's policy, random search's and uniform ``uniform_bits`` bits: the
   float network quantized with the policy, calibrated on the same batch as in an episode, fine-tuned
   ``finetune_epochs`` epochs (the regime's SGD Nesterov, cosine, at ``finetune_lr``) and scored on the test split;
   the mean of ``repeats`` fine-tune seeds.

Paired statistics over seeds (``quality_common.paired_stats``): HAQ vs random search (``search_acc``,
``random_acc``) and HAQ vs uniform bits (``uniform_acc``, ``vs_uniform.*``). ``episode_test_*``: the same three
policies scored the way an episode scores them (one-epoch fine-tune at lr 1e-3) on the test split.
"""

from __future__ import annotations

import copy
import statistics
import tempfile
from dataclasses import replace
from typing import Any

import torch
from lightning.pytorch import Trainer, seed_everything
from torch import nn

from benchmarks._spos_digits import quiet
from benchmarks.common import Bench
from benchmarks.quality_common import (
    QualityData,
    Regime,
    Splits,
    accuracy_on,
    add_data_arguments,
    load_splits,
    paired_stats,
    quality_figures,
    regime_from_args,
    train_and_score,
    train_standalone,
)
from lightning_nas.cost.hardware import BitSerialAccelerator, cost_lookup, policy_cost, profile_layers
from lightning_nas.modules import HAQModule
from lightning_nas.modules.quantized import calibrate, quant_layers, quantize_network
from lightning_nas.spaces import MobileNetSpace

SPACE = {"width_mult": 0.25, "stage_depths": (1, 2, 2, 2, 1, 1), "head_channels": 160}
BLOCK = "k3_e6"
"""quality_proxyless's small MobileNet space with every block MobileNetV2's MBConv 3×3 e6: 32 conv/linear layers."""

Policy = list[tuple[int, int]]


def float_network(splits: Splits, regime: Regime, seed: int) -> nn.Module:
    space = MobileNetSpace(splits.num_classes, splits.input_size, **SPACE)
    net = space.export(dict.fromkeys(space.decisions(), BLOCK))
    return train_standalone(net, splits, regime, seed)


def uniform_policy(n: int, bits: int, top: int = 8) -> Policy:
    """``bits`` everywhere but the first and last layer (pinned at ``top``, as the search pins them)."""
    return [(top, top) if i in (0, n - 1) else (bits, bits) for i in range(n)]


def uniform_ratio(net: nn.Module, splits: Splits, hardware: BitSerialAccelerator, bits: int) -> float:
    layers = profile_layers(quantize_network(net), splits.train[0][:2])
    table = cost_lookup(hardware, layers, 8)
    return policy_cost(table, uniform_policy(len(layers), bits)) / policy_cost(table, uniform_policy(len(layers), 8))


def run_haq(net: nn.Module, splits: Splits, regime: Regime, budget: float, episodes: int, warmup: int, seed: int
            ) -> HAQModule:
    """A HAQ search (``warmup >= episodes``: random search through the same episodes)."""
    quiet()
    seed_everything(seed, verbose=False)
    haq = HAQModule(model=net, num_classes=splits.num_classes, hardware=BitSerialAccelerator("edge"),
                    budget_ratio=budget, episodes=episodes, warmup=warmup, val_batches=None, seed=seed,
                    compare=False)
    with tempfile.TemporaryDirectory() as root:
        Trainer(accelerator="cpu", devices=1, max_epochs=-1, logger=False, enable_checkpointing=False,
                enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                default_root_dir=root).fit(haq, datamodule=QualityData(splits, regime.batch_size, seed=seed))
    return haq


def finetuned_test_acc(haq: HAQModule, policy: Policy, splits: Splits, regime: Regime, search_seed: int,
                       seeds: list[int]) -> float:
    """The final fine-tune of ``policy`` (quantize, calibrate on the search's calibration batch, train), test top-1,
    mean over ``seeds``."""
    dm = QualityData(splits, regime.batch_size, seed=search_seed)  # the datamodule run_haq gave the search
    calib = list(dm.calibration_dataloader(num_batches=haq.hparams.calib_batches))
    net = copy.deepcopy(haq.net)  # float weights (restored after every episode), quantizer settings per layer
    for layer, (w, a) in zip(haq.layers, haq.network_bits(policy)):
        quant_layers(net)[layer.name].wbits, quant_layers(net)[layer.name].abits = w, a
    calibrate(net, calib, torch.device("cpu"))
    return statistics.fmean(train_and_score([(net, seed, False) for seed in seeds], splits, regime))  # trains copies


def mean_bits(policy: Policy) -> list[float]:
    inner = policy[1:-1]
    return [statistics.fmean(w for w, _ in inner), statistics.fmean(a for _, a in inner)]


def one_seed(splits: Splits, regime: Regime, ft: Regime, s: int, cfg: dict[str, Any]) -> dict[str, Any]:
    net = float_network(splits, regime, s)
    budget = uniform_ratio(net, splits, BitSerialAccelerator("edge"), cfg["uniform_bits"])
    haq = run_haq(net, splits, regime, budget, cfg["episodes"], cfg["warmup"], s)
    rnd = run_haq(net, splits, regime, budget, cfg["episodes"], cfg["episodes"], s)
    policies = {"search": [tuple(p) for p in haq.best["policy"]], "random": [tuple(p) for p in rnd.best["policy"]],
                "uniform": uniform_policy(len(haq.layers), cfg["uniform_bits"])}
    seeds = [s * 1000 + k for k in range(ft.repeats)]
    test = {k: finetuned_test_acc(haq, p, splits, ft, s, seeds) for k, p in policies.items()}
    test_batches = [splits.test]
    episode = {k: haq.evaluate(p, batches=test_batches)[0] for k, p in policies.items()}
    table = cost_lookup(haq.hardware, haq.layers, 8)
    full = policy_cost(table, [(8, 8)] * len(haq.layers))
    return {"test": test, "episode_test": episode, "float": accuracy_on(net, splits.test),
            "reward_acc": {"search": haq.best["acc"], "random": rnd.best["acc"]}, "float_reward_acc": haq.acc_float,
            "best_episode": haq.best["episode"], "budget": budget,
            "cost_ratio": {k: policy_cost(table, p) / full for k, p in policies.items()},
            "bits": {k: mean_bits(p) for k, p in policies.items()}}


def main(argv: list[str] | None = None) -> None:
    bench = Bench("quality_haq", "HAQ search quality: the found policy vs random search's policy at the same number "
                  "of episodes (same per-episode fine-tune and reward) and vs uniform bits at equal cost, each given "
                  "the same final fine-tune, test accuracy paired over seeds.")
    args = bench.parse(argv, extra=_arguments)
    regime = regime_from_args(args)
    q = args.quick
    if q:
        regime = regime.smoke()
    seeds = [0, 1] if q else list(range(args.seeds))
    cfg = {"episodes": 4 if q else args.episodes, "warmup": 2 if q else 20, "uniform_bits": args.uniform_bits}
    ft = replace(regime, epochs=1 if q else args.finetune_epochs, lr=args.finetune_lr)
    splits = load_splits(regime)
    bench.settings.update({
        "method": "HAQ", **regime.settings(), "network": f"MobileNetSpace {SPACE}, every block {BLOCK}, trained "
        f"{regime.epochs} epochs in float", "hardware": "BitSerialAccelerator('edge') latency",
        "budget": f"{cfg['episodes']} episodes each (HAQ: {cfg['warmup']} warm-up), one-epoch fine-tune per episode; "
                  f"cost <= uniform {cfg['uniform_bits']}-bit; final fine-tune {ft.epochs} epochs at lr {ft.lr:g}",
        "episodes": cfg["episodes"], "warmup": cfg["warmup"], "uniform_bits": cfg["uniform_bits"],
        "final_finetune": f"{ft.epochs} epochs, SGD Nesterov lr {ft.lr:g} cosine, batch {ft.batch_size}, mean of "
                          f"{ft.repeats} seeds"})
    rows = []
    for s in seeds:
        rows.append(one_seed(splits, regime, ft, s, cfg))
        print(f"seed {s}: {rows[-1]['test']} episode-scored {rows[-1]['episode_test']}", flush=True)
    quality_figures(bench, seeds, [r["test"]["search"] for r in rows], [r["test"]["random"] for r in rows])
    uniform = [r["test"]["uniform"] for r in rows]
    bench.figure("uniform_acc", uniform)
    vs = paired_stats([r["test"]["search"] for r in rows], uniform)
    for key in ("search_minus_random_points", "ci95", "p_value", "wins"):
        bench.figure(f"vs_uniform.{key.replace('random', 'uniform')}", vs[key])
    bench.figure("float_acc", [r["float"] for r in rows])
    for k in ("search", "random", "uniform"):
        bench.figure(f"episode_test.{k}_acc", [r["episode_test"][k] for r in rows])
        bench.figure(f"cost_ratio.{k}", [r["cost_ratio"][k] for r in rows])
        bench.figure(f"mean_wbits_abits.{k}", [r["bits"][k] for r in rows])
    episode = paired_stats([r["episode_test"]["search"] for r in rows], [r["episode_test"]["random"] for r in rows])
    bench.figure("episode_test.search_minus_random_points", episode["search_minus_random_points"])
    bench.figure("episode_test.p_value", episode["p_value"])
    bench.figure("reward_acc.search", [r["reward_acc"]["search"] for r in rows])
    bench.figure("reward_acc.random", [r["reward_acc"]["random"] for r in rows])
    bench.figure("reward_acc.float", [r["float_reward_acc"] for r in rows])
    bench.figure("best_episode", [r["best_episode"] for r in rows])
    bench.figure("budget_ratio", [r["budget"] for r in rows])
    bench.note("search = HAQ's best-rewarded policy; random = the best-rewarded of as many uniformly random policies "
               "(HAQModule with every episode a warm-up episode: same budget walk, calibration, one-epoch fine-tune "
               "and reward); uniform = uniform bits at the budget. All three get the same final fine-tune; test split. "
               "episode_test.*: scored as an episode scores (one-epoch fine-tune at lr 1e-3) on the test split. "
               "reward_acc.*: the search's own objective, the fine-tune's running top-1 on the training split.")
    bench.emit()


def _arguments(parser) -> None:  # noqa: ANN001 - argparse.ArgumentParser
    add_data_arguments(parser)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--uniform-bits", type=int, default=3)
    parser.add_argument("--finetune-epochs", type=int, default=10)
    parser.add_argument("--finetune-lr", type=float, default=0.005)


if __name__ == "__main__":
    main()
