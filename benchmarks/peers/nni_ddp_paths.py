"""Claim check (b): under DDP, do NNI 3.0's SPOS/random one-shot ranks train different paths in one step?

Runs in the NNI venv:  /work/nni-venv/bin/python benchmarks/peers/nni_ddp_paths.py

Two processes (gloo, CPU) each build the SPOS ShuffleNet supernet (``RandomOneShot().mutate_model``), seed
every RNG identically (``random``, ``numpy``, ``torch``: what ``seed_everything(0)`` does on each rank), wrap
it in ``DistributedDataParallel`` and, per step, call ``resample()`` on the supernet modules exactly as NNI's
``RandomSamplingLightningModule.training_step`` does (no broadcast: NNI 3.0's oneshot code has no
``torch.distributed`` call). The ranks' samples are then all-gathered and compared. The claim is TRUE if
the ranks sample different paths in the same step (DDP then averages gradients of different sub-networks).
Also recorded: whether one process re-seeded identically reproduces its own samples (NNI's
``Categorical.random`` builds a fresh ``numpy.random.RandomState()`` per call, seeded from OS entropy, so
seeding the global RNGs does not control it). Last stdout line: one JSON object (from rank 0).
"""

from __future__ import annotations

import json
import os
import random
import sys
import tempfile
import warnings

warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
import torch.nn.functional as F  # noqa: E402

STEPS = 3


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build():
    from nni.nas.hub.pytorch import ShuffleNetSpace
    from nni.nas.oneshot.pytorch.supermodule.base import BaseSuperNetModule
    from nni.nas.strategy import RandomOneShot

    supernet = RandomOneShot().mutate_model(ShuffleNetSpace(num_labels=10, channel_search=True))
    modules = [m for m in supernet.modules() if isinstance(m, BaseSuperNetModule)]
    return supernet, modules


def resample(modules) -> dict:
    """``BaseOneShotLightningModule.resample`` (what ``RandomSamplingLightningModule.training_step`` calls)."""
    result: dict = {}
    for m in modules:
        result.update(m.resample(memo=result))
    return result


def worker(rank: int, world: int, init_file: str, result_file: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    seed_all(0)
    supernet, modules = build()
    ddp = torch.nn.parallel.DistributedDataParallel(supernet, find_unused_parameters=True)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.01)
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 10, (2,))
    samples, step_errors = [], []
    for _ in range(STEPS):
        sample = resample(modules)
        samples.append(sample)
        try:  # one real DDP step on the sampled path
            loss = F.cross_entropy(ddp(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        except Exception as e:  # noqa: BLE001
            step_errors.append(f"{type(e).__name__}: {e}"[:300])
    gathered: list = [None] * world
    dist.all_gather_object(gathered, {"samples": samples, "errors": step_errors})
    if rank == 0:
        seed_all(0)  # same process, same seeds again: are the samples reproduced?
        again = [resample(modules) for _ in range(STEPS)]
        per_step = []
        for s in range(STEPS):
            a, b = gathered[0]["samples"][s], gathered[1]["samples"][s]
            differing = [k for k in a if a[k] != b[k]]
            per_step.append({"step": s, "labels": len(a), "labels_differing_between_ranks": len(differing),
                             "example": {k: [a[k], b[k]] for k in differing[:4]}})
        reproduced = all(again[s] == gathered[0]["samples"][s] for s in range(STEPS))
        claim = all(p["labels_differing_between_ranks"] > 0 for p in per_step)
        with open(result_file, "w") as f:
            json.dump({"claim": "NNI 3.0 random/SPOS one-shot: DDP ranks sample different paths in the same step",
                       "claim_true": bool(claim),
                       "evidence": {"world_size": world, "backend": "gloo", "seeds": "random/numpy/torch = 0 on every rank",
                                    "per_step": per_step,
                                    "rank0_reseeded_reproduces_its_samples": bool(reproduced),
                                    "ddp_step_errors": [g["errors"] for g in gathered],
                                    "why": "nni.mutable.Categorical.random draws from a fresh numpy RandomState() "
                                           "(OS entropy) per call; nni/nas/oneshot has no broadcast of the sample"}}, f)
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    import nni
    with tempfile.TemporaryDirectory() as tmp:
        init_file, result_file = os.path.join(tmp, "init"), os.path.join(tmp, "result.json")
        mp.spawn(worker, args=(2, init_file, result_file), nprocs=2, join=True)
        with open(result_file) as f:
            out = json.load(f)
    out.update({"nni": nni.__version__, "torch": torch.__version__})
    print(json.dumps(out))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
