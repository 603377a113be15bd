"""Training memory of ProxylessNAS's steps vs the exported path, next to an all-paths DARTS-style step.

Memory is the bytes of activations autograd saves for backward during the forward (see
``benchmarks.common``), measured for the same arch and batch as:

- ``exported``: ``space.export(arch)``, a plain network;
- ``weight``: ProxylessNAS's weight step, the supernet on one activated path (target ≤ 1.3 × exported);
- ``arch``: ProxylessNAS's two-path arch step, exactly as ``ProxylessModule._gate_loss`` builds it
  (``BinaryGates`` over ``sample_gates(softmax(α), "two_path")``: the sampled candidate runs with
  gradients, the other one of the pair under ``no_grad``);
- ``darts``: every candidate of every block runs with gradients and the block outputs
  ``Σ_j softmax(α)_j · o_j`` (DARTS's mixed op, written here), whose memory grows with the number of
  candidates: measured for 2, 4 and 6 candidates per block.

Step-time ratios over the exported step (forward + backward + optimizer step) come from interleaved rounds.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmarks.common import Bench, interleaved, ratios, saved_activation_bytes, spread
from lightning_nas.nn.layer_choice import LayerChoice, inactive_parameters
from lightning_nas.spaces import MobileNetSpace
from lightning_nas.strategies.binary_gates import BinaryGates, choices_by_decision, sample_gates

BATCH, SIZE, CLASSES = 32, 32, 10
CANDIDATES = ("k3_e3", "k3_e6", "k5_e3", "k5_e6", "k7_e3", "k7_e6")


def make_space(n_candidates: int) -> MobileNetSpace:
    # no zero op: a sampled zero skips its block, which would make the one-path figures arch-dependent
    return MobileNetSpace(CLASSES, SIZE, width_mult=0.25, stage_depths=(2, 2, 2, 2, 2, 1), head_channels=320,
                          candidates=CANDIDATES[:n_candidates], allow_zero=False)


@contextlib.contextmanager
def mixed_ops(space: MobileNetSpace, alphas: dict[str, Tensor]) -> Iterator[None]:
    """DARTS: while open, each ``LayerChoice`` outputs the softmax-weighted sum of all its candidates."""
    def mixed(choice: LayerChoice) -> Callable[[Tensor], Tensor]:
        def forward(x: Tensor) -> Tensor:
            w = torch.softmax(alphas[choice.name], 0)
            return sum(w[j] * choice.candidate(j)(x) for j in range(len(choice.keys)))
        return forward

    choices = [m for m in space.modules() if isinstance(m, LayerChoice)]
    for c in choices:
        c.forward = mixed(c)  # an instance attribute shadows the class's forward; deleted on exit
    try:
        yield
    finally:
        for c in choices:
            del c.forward


class Steps:
    """The four training steps of one space and arch on one batch."""

    def __init__(self, space: MobileNetSpace, gen: torch.Generator) -> None:
        self.space, self.gen = space.train(), gen
        self.x = torch.randn(BATCH, 3, SIZE, SIZE, generator=gen)
        self.y = torch.randint(0, CLASSES, (BATCH,), generator=gen)
        self.arch = space.sample(gen)
        space.activate(self.arch)
        self.exported = space.export(self.arch).train()
        decisions = space.decisions()
        self.alphas = {k: nn.Parameter(torch.randn(len(v), generator=gen) * 1e-3) for k, v in decisions.items()}
        self.choices = choices_by_decision(space)
        self.w_opt = torch.optim.SGD(space.parameters(), lr=0.01, momentum=0.9, nesterov=True)
        self.e_opt = torch.optim.SGD(self.exported.parameters(), lr=0.01, momentum=0.9, nesterov=True)
        self.a_opt = torch.optim.Adam(self.alphas.values(), lr=1e-3, betas=(0.0, 0.999))
        self.cache: dict = {}

    # --- forwards (losses), measured for memory ---
    def exported_loss(self) -> Tensor:
        return F.cross_entropy(self.exported(self.x), self.y)

    def weight_loss(self) -> Tensor:
        self.space.activate(self.arch, validate=False)
        return F.cross_entropy(self.space(self.x), self.y)

    def arch_loss(self) -> Tensor:
        samples = {n: sample_gates(torch.softmax(a.detach(), 0), "two_path", self.gen) for n, a in self.alphas.items()}
        with BinaryGates(self.choices, self.alphas, samples):
            loss = F.cross_entropy(self.space(self.x), self.y)
        self.space.activate(self.arch, validate=False)
        return loss

    def darts_loss(self) -> Tensor:
        with mixed_ops(self.space, self.alphas):
            return F.cross_entropy(self.space(self.x), self.y)

    # --- whole steps, timed ---
    def exported_step(self) -> None:
        self.e_opt.zero_grad(set_to_none=True)
        self.exported_loss().backward()
        self.e_opt.step()

    def weight_step(self) -> None:
        self.w_opt.zero_grad(set_to_none=True)
        self.weight_loss().backward()
        for p in inactive_parameters(self.space.choice_modules(), self.cache):
            p.grad = None
        self.w_opt.step()

    def arch_step(self) -> None:
        self.a_opt.zero_grad(set_to_none=True)
        self.arch_loss().backward()
        for p in self.space.parameters():
            p.grad = None  # an arch step updates α only
        self.a_opt.step()

    def darts_step(self) -> None:  # first-order DARTS, weights and α in one step
        self.w_opt.zero_grad(set_to_none=True)
        self.a_opt.zero_grad(set_to_none=True)
        self.darts_loss().backward()
        self.w_opt.step()
        self.a_opt.step()

    def memory(self) -> dict[str, int]:
        params = list(self.space.parameters()) + list(self.exported.parameters()) + list(self.alphas.values())
        return {name: saved_activation_bytes(getattr(self, f"{name}_loss"), params)
                for name in ("exported", "weight", "arch", "darts")}


def main(argv: list[str] | None = None) -> None:
    bench = Bench("proxyless_memory", "Saved-activation memory and step time of ProxylessNAS's weight step (one path) "
                  "and arch step (two gated paths) over the exported path's, next to an all-paths DARTS step.")
    args = bench.parse(argv)
    archs, rounds, reps = (2, 2, 1) if args.quick else (3, 8, 1)
    bench.settings.update({"space": "MobileNetSpace(width_mult=0.25, depths 2-2-2-2-2-1, no zero op)",
                           "batch": BATCH, "input_size": SIZE, "archs": archs, "rounds": rounds,
                           "reps_per_round": reps})
    gen = torch.Generator().manual_seed(args.seed)
    for k in (2, 4, 6):
        space = make_space(k)
        mems = [Steps(space, gen).memory() for _ in range(archs)]
        ratio = {n: spread(m[n] / m["exported"] for m in mems)["median"] for n in ("weight", "arch", "darts")}
        if k == len(CANDIDATES):
            bench.figure("exported_saved_MiB", spread(m["exported"] for m in mems)["median"] / 2**20)
            bench.figure("weight_mem_ratio", ratio["weight"])
            bench.figure("arch_mem_ratio", ratio["arch"])
        bench.figure(f"darts_mem_ratio_{k}_candidates", ratio["darts"])
    bench.target("weight_mem_ratio", "<=", 1.3)
    step_ratios: dict[str, list[float]] = {"weight": [], "arch": [], "darts": []}
    space = make_space(len(CANDIDATES))
    for _ in range(archs):
        steps = Steps(space, gen)
        times = interleaved({n: getattr(steps, f"{n}_step") for n in ("exported", "weight", "arch", "darts")},
                            rounds, reps, warmup=1)
        for n in step_ratios:
            step_ratios[n] += ratios(times[n], times["exported"])
    for n, r in step_ratios.items():
        s = spread(r)
        bench.figure(f"{n}_time_ratio", s["median"])
        bench.figure(f"{n}_time_ratio_min_max", [s["min"], s["max"]])
    bench.note("*_mem_ratio: saved activations of that step's forward / the exported path's, median over archs "
               "(parameters not counted); *_time_ratio: median per-round step time / exported step time.")
    bench.note("The arch step's forward value is the sampled path's; its second candidate runs under no_grad, so "
               "only its output (kept for the gate gradient) adds memory.")
    bench.emit()


if __name__ == "__main__":
    main()
