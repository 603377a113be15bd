"""NNI 3.0 side of the peer comparison: one supernet training step (forward + backward + SGD step).

Runs in the NNI venv (``benchmarks/peers/setup_nni.sh``), never in ours:

    /work/nni-venv/bin/python benchmarks/peers/nni_step.py [--reps 5] [--warmup 2]

Spaces: ``nni.nas.hub.pytorch.ShuffleNetSpace(num_labels=10, channel_search=True)`` (its default affine BN: with
``affine=False`` NNI 3.0 crashes in MixedBatchNorm2d, ``weight[:num_features]`` on ``None``) and
``nni.nas.hub.pytorch.ProxylessNAS(num_labels=10)``, both turned into NNI's SPOS / path-sampling supernet by
``nni.nas.strategy.RandomOneShot().mutate_model(space)`` (what NNI's ``RandomOneShot`` strategy trains: every
``training_step`` calls ``resample()`` on all supernet modules, then the user's step on the supernet).

Geometry: NNI's hub spaces are written for 224 px (stem stride 2, every stage's first block stride 2).
``lightning_nas``' spaces at ``input_size=32`` use the CIFAR convention instead (stem stride 1 and first
stage stride 1). So that both sides compute the same network, ``--geometry cifar`` (the default) sets the
stride of NNI's stem conv and of the first stage's downsampling convs to 1 after the supernet is built
(``init_arguments['stride']`` of NNI's mixed ops, ``.stride`` of plain convs); ``--geometry imagenet``
keeps NNI's space as shipped (then run ``ours_step.py --geometry imagenet``).

Cases, batch 64, 32 px, CPU, one torch thread:

- ``smallest``: the fixed arch of fewest MACs (ShuffleNet: k3 + width 0.2x everywhere; ProxylessNAS: depth 1,
  k3e3 everywhere), run through the supernet (``resample(memo=arch)`` once);
- ``largest``: the fixed arch of most MACs (ShuffleNet: xception + 1.6x everywhere; ProxylessNAS: depth 4,
  k7e6 everywhere);
- ``random``: a fresh uniformly sampled path each step, as ``RandomSamplingLightningModule.training_step``.

Memory: bytes autograd saves for backward during the forward (saved_tensors_hooks, each storage once,
parameters excluded), the method of ``benchmarks/common.py``; MACs of the fixed archs are counted with
forward hooks on the convs/linears, to check both sides run the same network.

Last stdout line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the same memory measure as ours_step.py
import nni  # noqa: E402
from nni.nas.hub.pytorch import ProxylessNAS, ShuffleNetSpace  # noqa: E402
from nni.nas.oneshot.pytorch.supermodule.base import BaseSuperNetModule  # noqa: E402
from nni.nas.strategy import RandomOneShot  # noqa: E402

from benchmarks.common import saved_activation_bytes  # noqa: E402  (stdlib + torch only: runs in NNI's venv)

BATCH, SIZE, CLASSES = 64, 32, 10


def set_stride1(module: nn.Module) -> None:
    """Make a (mixed or plain) conv stride 1."""
    if hasattr(module, "init_arguments") and "stride" in module.init_arguments:
        module.init_arguments["stride"] = 1
    if isinstance(module, nn.Conv2d):
        module.stride = (1, 1)


def build(space_name: str, geometry: str) -> tuple[nn.Module, list[BaseSuperNetModule]]:
    if space_name == "shufflenet":
        space = ShuffleNetSpace(num_labels=CLASSES, channel_search=True)  # affine=False crashes NNI 3.0 (MixedBatchNorm2d slices weight=None)
    else:
        space = ProxylessNAS(num_labels=CLASSES)
    supernet = RandomOneShot().mutate_model(space)
    if geometry == "cifar":
        if space_name == "shufflenet":
            set_stride1(supernet.first_conv[0])
            stage1 = "features.0."  # layer_1: first block of the first stage
        else:
            set_stride1(supernet.stem[0])
            stage1 = "blocks.1."  # s2: the first searchable stage (its block 0 downsamples)
        for name, m in supernet.named_modules():
            if name.startswith(stage1) and isinstance(m, nn.Conv2d):
                stride = m.init_arguments.get("stride", 1) if hasattr(m, "init_arguments") else m.stride[0]
                if stride in (2, (2, 2)) or m.stride == (2, 2):
                    set_stride1(m)
    modules = [m for m in supernet.modules() if isinstance(m, BaseSuperNetModule)]
    return supernet, modules


def resample(modules: list[BaseSuperNetModule], memo: dict | None = None) -> dict:
    """What NNI's ``BaseOneShotLightningModule.resample`` does (``memo`` pre-filled: a fixed arch)."""
    result = dict(memo or {})
    for m in modules:
        result.update(m.resample(memo=result))
    return result


def labels(supernet: nn.Module) -> dict:
    return {k: list(v.values) for k, v in supernet.simplify().items()}


def fixed_arch(space_name: str, space: dict, which: str) -> dict:
    pick = min if which == "smallest" else max
    arch = {}
    for label, values in space.items():
        if label.startswith("channel_") or label.endswith("_depth"):
            arch[label] = pick(values)
        elif space_name == "shufflenet":
            arch[label] = "k3" if which == "smallest" else "xcep"
        else:
            arch[label] = "k3e3" if which == "smallest" else "k7e6"
    return arch


def count_macs(model: nn.Module, x: torch.Tensor) -> int:
    total = 0

    def hook(m: nn.Module, inp: tuple, out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(m, nn.Conv2d):
            # mixed convs slice their weight at forward: infer from in/out shapes and the kernel actually used
            cin, cout = inp[0].shape[1], out.shape[1]
            groups = cin if (m.groups > 1 or (hasattr(m, "init_arguments") and m.init_arguments.get("groups", 1) != 1)) else 1
            k = m.kernel_size[0] * m.kernel_size[1]
            total += out.shape[2] * out.shape[3] * cout * (cin // groups) * k
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
    out: dict = {"framework": "nni", "nni": nni.__version__, "torch": torch.__version__, "geometry": args.geometry,
                 "batch": BATCH, "size": SIZE, "threads": torch.get_num_threads(), "cases": {}}
    for space_name in args.spaces.split(","):
        supernet, modules = build(space_name, args.geometry)
        space = labels(supernet)
        opt = torch.optim.SGD(supernet.parameters(), lr=0.01, momentum=0.9)
        params = list(supernet.parameters())

        def step(arch: dict | None) -> float:
            start = time.perf_counter()
            if arch is None:
                resample(modules)  # NNI's own sampling, as RandomSamplingLightningModule.training_step
            loss = F.cross_entropy(supernet(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return time.perf_counter() - start

        for case in ("smallest", "largest", "random"):
            arch = None if case == "random" else fixed_arch(space_name, space, case)
            if arch is not None:
                resample(modules, arch)
            for _ in range(args.warmup):
                step(arch)
            times = [step(arch) for _ in range(args.reps)]
            rec = {"step_ms": 1e3 * statistics.median(times), "step_ms_all": [round(1e3 * t, 2) for t in times]}
            if arch is not None:
                rec["macs"] = count_macs(supernet, x)
                rec["saved_bytes"] = saved_activation_bytes(
                    lambda: F.cross_entropy(supernet(x), y), params)
            else:
                mem = []
                for _ in range(3):
                    resample(modules)
                    mem.append(saved_activation_bytes(lambda: F.cross_entropy(supernet(x), y), params))
                rec["saved_bytes"] = statistics.median(mem)
            out["cases"][f"{space_name}/{case}"] = rec
            print(f"{space_name}/{case}: {rec['step_ms']:.1f} ms", file=sys.stderr, flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
