"""lightning_nas side of the peer comparison: one supernet training step (forward + backward + SGD step).

Runs in our venv:

    .venv/bin/python benchmarks/peers/ours_step.py [--reps 5] [--warmup 2]

The same networks as ``nni_step.py`` (see its docstring for the NNI side):

- ShuffleNet SPOS with channel search: ``ShuffleNetSpace(num_classes=10, input_size=32, channel_search=True)``;
  smallest = ``shuffle3x3`` + width 0.2 everywhere, largest = ``xception`` + width 1.6 everywhere, random =
  ``space.sample(generator)`` + ``space.activate`` every step (uniform over op and width, as NNI's).
- ProxylessNAS: ``MobileNetSpace(num_classes=10, input_size=32, stage_channels=(32, 40, 80, 96, 192, 320))``,
  NNI's stage widths (ours default to 24 for the first stage). NNI searches each stage's depth (1-4, a
  ``Repeat``); ours a ``zero`` op per non-first block. The cases are the same networks: smallest = the
  first block of each stage ``k3_e3``, the others ``zero`` (depth 1); largest = ``k7_e6`` everywhere
  (depth 4); random = NNI's distribution (a depth uniform in 1..4 per stage, an op uniform over the six,
  ``zero`` past the depth), drawn with a seeded ``torch.Generator`` and activated every step.

``--geometry imagenet`` builds ours with the 224-px strides (``input_size=224``) and still feeds 32 px, to
match NNI's spaces as shipped. Memory: ``benchmarks.common.saved_activation_bytes``. Last stdout line: JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.common import saved_activation_bytes  # noqa: E402
from lightning_nas.spaces import MobileNetSpace, ShuffleNetSpace  # noqa: E402

BATCH, SIZE, CLASSES = 64, 32, 10


def count_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Conv/linear multiply-adds of one sample, from the shapes each layer actually ran with."""
    total = 0

    def hook(m: nn.Module, inp: tuple, out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(m, nn.Conv2d):
            cin, cout = inp[0].shape[1], out.shape[1]
            groups = cin if m.groups > 1 else 1
            total += out.shape[2] * out.shape[3] * cout * (cin // groups) * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, nn.Linear):
            total += inp[0].shape[1] * out.shape[1]

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model.eval()
        model(x[:1])
        model.train()
    for h in handles:
        h.remove()
    return total


def mobilenet_arch(space: MobileNetSpace, depths: list[int], ops: list[str]) -> dict:
    """Per-stage depths + per-block ops -> our arch (blocks past a stage's depth are ``zero``)."""
    arch, i = {}, 0
    for stage, depth in enumerate(space._config["stage_depths"]):
        for j in range(depth):
            arch[f"blocks.{i}.op"] = ops[i] if j < depths[stage] else "zero"
            i += 1
    return arch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--geometry", choices=("cifar", "imagenet"), default="cifar")
    parser.add_argument("--spaces", default="shufflenet,proxyless")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    x = torch.randn(BATCH, 3, SIZE, SIZE)
    y = torch.randint(0, CLASSES, (BATCH,))
    input_size = SIZE if args.geometry == "cifar" else 224
    gen = torch.Generator().manual_seed(args.seed)
    out: dict = {"framework": "lightning_nas", "torch": torch.__version__, "geometry": args.geometry,
                 "batch": BATCH, "size": SIZE, "threads": torch.get_num_threads(), "cases": {}}
    for space_name in args.spaces.split(","):
        if space_name == "shufflenet":
            space = ShuffleNetSpace(num_classes=CLASSES, input_size=input_size, channel_search=True)
            dec = space.decisions()

            def fixed(which: str, dec=dec) -> dict:
                return {k: (min(v) if which == "smallest" else max(v)) if k.endswith(".width")
                        else ("shuffle3x3" if which == "smallest" else "xception") for k, v in dec.items()}

            def draw(space=space) -> dict:
                return space.sample(gen)
        else:
            space = MobileNetSpace(num_classes=CLASSES, input_size=input_size,
                                   stage_channels=(32, 40, 80, 96, 192, 320))
            n_blocks, depths_max = space.num_blocks, space._config["stage_depths"]
            cands = list(space.candidates)

            def fixed(which: str, space=space, n_blocks=n_blocks, depths_max=depths_max) -> dict:
                if which == "smallest":
                    return mobilenet_arch(space, [1] * len(depths_max), ["k3_e3"] * n_blocks)
                return mobilenet_arch(space, list(depths_max), ["k7_e6"] * n_blocks)

            def draw(space=space, n_blocks=n_blocks, depths_max=depths_max, cands=cands) -> dict:
                u = torch.rand(len(depths_max) + n_blocks, generator=gen, dtype=torch.float64).tolist()
                depths = [min(int(1 + a * d), d) for a, d in zip(u, depths_max)]
                ops = [cands[min(int(a * len(cands)), len(cands) - 1)] for a in u[len(depths_max):]]
                return mobilenet_arch(space, depths, ops)

        opt = torch.optim.SGD(space.parameters(), lr=0.01, momentum=0.9)
        params = list(space.parameters())

        def step(random: bool, space=space, opt=opt, draw=draw) -> float:
            start = time.perf_counter()
            if random:
                space.activate(draw())
            loss = F.cross_entropy(space(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return time.perf_counter() - start

        for case in ("smallest", "largest", "random"):
            random = case == "random"
            if not random:
                space.activate(fixed(case))
            for _ in range(args.warmup):
                step(random)
            times = [step(random) for _ in range(args.reps)]
            rec = {"step_ms": 1e3 * statistics.median(times), "step_ms_all": [round(1e3 * t, 2) for t in times]}
            if not random:
                rec["macs"] = count_macs(space, x)
                rec["saved_bytes"] = saved_activation_bytes(lambda: F.cross_entropy(space(x), y), params)
            else:
                mem = []
                for _ in range(3):
                    space.activate(draw())
                    mem.append(saved_activation_bytes(lambda: F.cross_entropy(space(x), y), params))
                rec["saved_bytes"] = statistics.median(mem)
            out["cases"][f"{space_name}/{case}"] = rec
            print(f"{space_name}/{case}: {rec['step_ms']:.1f} ms", file=sys.stderr, flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
