"""Supernet step on an activated path vs the exported sub-network's step (same arch, same batch).

A training step is forward + cross-entropy + backward + SGD (momentum, weight decay) step. The
supernet step is what ``SPOSModule`` does per batch: the path is activated beforehand, gradients of
candidates that did not run are dropped (``SPOSModule.inactive_parameters``) and SGD runs over every
supernet parameter. The exported network (``space.export(arch)``) gets the same optimizer settings.
Both steps alternate in interleaved rounds; the figure is the median per-round ratio
``supernet / exported`` (target ≤ 1.10). Separately: the time of ``space.sample(gen)`` +
``space.activate(arch, validate=False)`` as a share of the supernet step (target < 1 %).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.common import Bench, interleaved, ratios, spread, timed
from lightning_nas.modules.spos import SPOSModule
from lightning_nas.spaces import MobileNetSpace, ShuffleNetSpace

BATCH, SIZE, CLASSES = 64, 32, 10


def spaces() -> dict[str, nn.Module]:
    """The spaces measured (CIFAR-size inputs, narrowed so a step takes well under a second on one core)."""
    return {
        "shufflenet": ShuffleNetSpace(CLASSES, SIZE, width_mult=0.25, head_channels=256),
        "shufflenet_channel": ShuffleNetSpace(CLASSES, SIZE, width_mult=0.25, head_channels=256, channel_search=True),
        "mobilenet": MobileNetSpace(CLASSES, SIZE, width_mult=0.25, stage_depths=(2, 2, 2, 2, 2, 1),
                                    head_channels=320),
    }


def train_step(net: nn.Module, x: torch.Tensor, y: torch.Tensor,
               drop: Callable[[], list[nn.Parameter]] | None = None) -> Callable[[], None]:
    """One SGD training step of ``net`` on ``(x, y)``; ``drop`` lists parameters whose gradient is discarded."""
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=4e-5)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        if drop is not None:
            for p in drop():
                p.grad = None
        opt.step()

    return step


def measure_space(space: nn.Module, archs: int, rounds: int, reps: int, seed: int) -> tuple[list[float], list, float]:
    """Per-round ratios over ``archs`` random archs, per-arch medians, and the supernet step's median seconds."""
    module = SPOSModule(space)  # for its inactive_parameters(): the real SPOS step drops those gradients
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.randn(BATCH, 3, SIZE, SIZE, generator=gen), torch.randint(0, CLASSES, (BATCH,), generator=gen)
    all_ratios, per_arch, super_times = [], [], []
    for _ in range(archs):
        arch = space.sample(gen)
        space.train().activate(arch)
        exported = space.export(arch).train()
        supernet_step = train_step(space, x, y, module.inactive_parameters)
        exported_step = train_step(exported, x, y)
        times = interleaved({"supernet": supernet_step, "exported": exported_step}, rounds, reps)
        r = ratios(times["supernet"], times["exported"])
        all_ratios += r
        per_arch.append(spread(r)["median"])
        super_times += times["supernet"]
    return all_ratios, per_arch, spread(super_times)["median"]


def sampling_seconds(space: nn.Module, calls: int) -> float:
    """Mean seconds of one ``sample`` + ``activate(validate=False)``."""
    gen = torch.Generator().manual_seed(1)
    return timed(lambda: space.activate(space.sample(gen), validate=False), calls)


def main(argv: list[str] | None = None) -> None:
    bench = Bench("supernet_overhead", "Training step of the supernet on an activated path over the exported "
                  "sub-network's step (same arch and batch), and the share of path sampling + activation.")
    args = bench.parse(argv)
    archs, rounds, reps = (1, 2, 1) if args.quick else (3, 10, 2)
    bench.settings.update({"batch": BATCH, "input_size": SIZE, "archs_per_space": archs, "rounds": rounds,
                           "reps_per_round": reps, "optimizer": "SGD(momentum=0.9, weight_decay=4e-5)"})
    for name, space in spaces().items():
        all_ratios, per_arch, step_s = measure_space(space, archs, rounds, reps, args.seed)
        s = spread(all_ratios)
        bench.figure(f"{name}.ratio", s["median"])
        bench.figure(f"{name}.ratio_iqr", [s["q1"], s["q3"]])
        bench.figure(f"{name}.ratio_min_max", [s["min"], s["max"]])
        bench.figure(f"{name}.ratio_per_arch", per_arch)
        bench.figure(f"{name}.supernet_step_ms", step_s * 1e3)
        bench.target(f"{name}.ratio", "<=", 1.10)
        share = sampling_seconds(space, 200 if args.quick else 1000) / step_s
        bench.figure(f"{name}.sampling_share_pct", 100 * share)
        bench.target(f"{name}.sampling_share_pct", "<", 1.0)
    bench.note("ratio: median over rounds (and archs) of per-round supernet/exported step time; "
               "ratio_iqr / ratio_min_max: the spread of those per-round ratios; ratio_per_arch: each arch's median.")
    bench.note("The exported net has affine BatchNorm (the supernet's is non-affine), so it does slightly more work.")
    bench.emit()


if __name__ == "__main__":
    main()
