"""Training memory and step time of PARSEC's weight step (``K`` archs, one at a time) on the DARTS cell space.

The PARSEC step is ``PARSECModule.training_step`` itself, run outside a ``Trainer``: the module gets a
stand-in trainer (``fit_loop.total_batch_idx``, a single-process ``strategy.reduce`` that returns its
input, ``estimated_stepping_batches``) and its Lightning plumbing is replaced by the single-process
equivalents (``manual_backward`` → ``loss.backward()``, ``clip_gradients`` → ``clip_grad_norm_``,
``optimizers``/``lr_schedulers`` → the objects of its own ``configure_optimizers``, ``log_dict`` → no-op).
The prior step is switched off (``prior_update_every`` larger than the run): it is ``K`` no-grad forwards.

- **Memory**: the peak, over the whole weight step, of the bytes of the tensors autograd holds for
  backward (each storage once, parameters not counted: ``benchmarks.common``'s measure, tracked *live*:
  a saved tensor stops counting when backward frees its graph, or when the forward drops a branch the
  loss does not use), divided by the same peak of the largest of the same ``K`` archs' forward+backward
  alone: 1.0 means only one arch's activations are ever alive.
- **DARTS**: a mixed cell written here on the same space: every intermediate node sums, over every
  earlier state, every candidate op weighted by ``softmax(α)`` (one α vector per (cell type, node,
  input), shared by the cells of a type, as DARTS): its saved bytes over one arch's, for 2, 4 and all 7
  candidate ops (the space rebuilt with the first ``n`` of ``DARTS_OPS``).
- **Time**: per-round ratios (interleaved rounds) of the PARSEC step with ``K`` archs over one arch's
  plain step (activate, forward, cross-entropy, backward, clip, SGD step) averaged over the same ``K``
  archs; ``K`` archs cost ``≈ K`` single steps.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmarks.common import Bench, interleaved, ratios, saved_activation_bytes, spread
from lightning_nas.callbacks.path_sampling import step_generator
from lightning_nas.modules.parsec import PARSECModule, sample_indices
from lightning_nas.spaces import DartsCellSpace
from lightning_nas.spaces.darts import CELL_TYPES, SearchCell
from lightning_nas.spaces.darts_ops import DARTS_OPS

CLASSES, SIZE = 10, 32
KS = (1, 2, 4, 8)


class PeakSaved:
    """Live bytes of the tensors autograd holds for backward (each storage once), and their peak."""

    def __init__(self, exclude: Iterable[Tensor]) -> None:
        self.skip = {p.untyped_storage().data_ptr() for p in exclude}
        self.count: dict[int, int] = {}
        self.size: dict[int, int] = {}
        self.live = self.peak = 0

    def _add(self, ptr: int, nbytes: int) -> None:
        if self.count.get(ptr, 0) == 0:
            self.size[ptr] = nbytes
            self.live += nbytes
            self.peak = max(self.peak, self.live)
        self.count[ptr] = self.count.get(ptr, 0) + 1

    def _drop(self, ptr: int) -> None:
        self.count[ptr] -= 1
        if self.count[ptr] == 0:
            self.live -= self.size.pop(ptr)

    def pack(self, t: Tensor) -> Any:
        ptr = t.untyped_storage().data_ptr()
        if ptr in self.skip or ptr == 0:
            return t
        # detached: a saved *output* held with its grad_fn would make a reference cycle (node → saved → tensor →
        # node) that keeps a branch the loss does not use alive until the garbage collector runs
        return _Held(self, ptr, t.untyped_storage().nbytes(), t.detach())

    @staticmethod
    def unpack(held: Any) -> Tensor:
        return held.t if isinstance(held, _Held) else held

    @contextlib.contextmanager
    def watch(self) -> Iterator[PeakSaved]:
        with torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack):
            yield self


class _Held:
    """A saved tensor as autograd holds it: counts while alive (backward frees it with its graph)."""

    __slots__ = ("owner", "ptr", "t")

    def __init__(self, owner: PeakSaved, ptr: int, nbytes: int, t: Tensor) -> None:
        self.owner, self.ptr, self.t = owner, ptr, t
        owner._add(ptr, nbytes)

    def __del__(self) -> None:
        self.owner._drop(self.ptr)


def make_space(channels: int, layers: int, n_ops: int = len(DARTS_OPS)) -> DartsCellSpace:
    return DartsCellSpace(num_classes=CLASSES, input_size=SIZE, init_channels=channels, layers=layers,
                          ops=DARTS_OPS[:n_ops])


def standalone(space: DartsCellSpace, steps: int = 10**9) -> PARSECModule:
    """A ``PARSECModule`` whose ``training_step`` runs without a ``Trainer`` (single process, no prior step)."""
    module = PARSECModule(space, K=1, prior_update_every=10**9).train()
    module._trainer = SimpleNamespace(  # what training_step / configure_optimizers read from the trainer
        fit_loop=SimpleNamespace(total_batch_idx=0), estimated_stepping_batches=steps,
        strategy=SimpleNamespace(reduce=lambda value, reduce_op="sum": value))
    (w_opt, p_opt), [sched] = module.configure_optimizers()
    module.optimizers = lambda: (w_opt, p_opt)
    module.lr_schedulers = lambda: sched["scheduler"]
    module.manual_backward = lambda loss: loss.backward()
    module.clip_gradients = lambda opt, gradient_clip_val, gradient_clip_algorithm: nn.utils.clip_grad_norm_(
        space.parameters(), gradient_clip_val)
    module.log_dict = lambda *args, **kwargs: None
    return module


class Steps:
    """PARSEC weight steps with ``K`` archs at a fixed step index, and one-arch steps over the same archs."""

    def __init__(self, module: PARSECModule, x: Tensor, y: Tensor, step: int) -> None:
        self.module, self.space, self.x, self.y, self.step = module, module.space, x, y, step
        self.w_opt, _ = module.optimizers()
        self.sched = module.lr_schedulers()

    def archs(self, k: int) -> list[dict]:
        """The ``K`` archs ``training_step`` draws at this step (the module's own sampler and seed)."""
        m = self.module
        return [m._arch(i) for i in sample_indices(m.prior_logits, k, step_generator(m.hparams.seed, self.step))]

    def parsec(self, k: int) -> Callable[[], None]:
        def run() -> None:
            self.module.hparams.K = k
            self.module.trainer.fit_loop.total_batch_idx = self.step
            self.module.training_step((self.x, self.y), 0)
        return run

    def single(self, arch: dict) -> None:
        self.w_opt.zero_grad(set_to_none=True)
        self.space.activate(arch, validate=False)
        F.cross_entropy(self.space(self.x), self.y).backward()
        nn.utils.clip_grad_norm_(self.space.parameters(), self.module.hparams.grad_clip)
        self.w_opt.step()
        self.sched.step()

    def singles(self, k: int) -> Callable[[], None]:
        archs = self.archs(k)

        def run() -> None:
            for arch in archs:
                self.single(arch)
        return run

    def peak(self, fn: Callable[[], Any]) -> int:
        """Peak live saved bytes while ``fn()`` runs (parameters not counted)."""
        tracker = PeakSaved(self.module.parameters())
        with tracker.watch():
            fn()
        return tracker.peak

    def one_arch(self, arch: dict) -> None:
        """One arch's forward + backward (the gradients are dropped: measured for memory only)."""
        self.space.activate(arch, validate=False)
        F.cross_entropy(self.space(self.x), self.y).backward()
        self.w_opt.zero_grad(set_to_none=True)

    def parsec_memory(self, k: int) -> tuple[int, int, int]:
        """(peak of a K-arch step, the largest and the median peak of the same K archs' forward+backward alone)."""
        alone = sorted(self.peak(lambda a=a: self.one_arch(a)) for a in self.archs(k))
        return self.peak(self.parsec(k)), alone[-1], alone[len(alone) // 2]


@contextlib.contextmanager
def mixed_cells(space: DartsCellSpace, alphas: dict[str, Tensor]) -> Iterator[None]:
    """DARTS: while open, each node sums every candidate op of every earlier state, weighted by softmax(α)."""
    def mixed(cell: SearchCell) -> Callable[[Tensor, Tensor], Tensor]:
        ctype = CELL_TYPES[int(cell.reduction)]

        def forward(s0: Tensor, s1: Tensor) -> Tensor:
            states = [cell.pre0(s0), cell.pre1(s1)]
            for i, (slot, _) in enumerate(cell.nodes):
                terms = []
                for j, h in enumerate(states):
                    bank = next(b for b in slot.banks if j in b.inputs)  # the op weights of this stride
                    w = torch.softmax(alphas[f"{ctype}.node{i}.edge{j}"], 0)
                    terms += [w[o] * op(h) for o, op in enumerate(bank.ops.values())]
                states.append(sum(terms))
            return torch.cat(states[2:], dim=1)
        return forward

    cells = [c for c in space.features if isinstance(c, SearchCell)]
    for c in cells:
        c.forward = mixed(c)  # an instance attribute shadows the class's forward; deleted on exit
    try:
        yield
    finally:
        for c in cells:
            del c.forward


def darts_alphas(space: DartsCellSpace, gen: torch.Generator) -> dict[str, nn.Parameter]:
    nodes = len(space.features[0].nodes)
    return {f"{t}.node{i}.edge{j}": nn.Parameter(torch.randn(len(space.ops), generator=gen) * 1e-3)
            for t in CELL_TYPES for i in range(nodes) for j in range(i + 2)}


def _one_arch_loss(space: DartsCellSpace, arch: dict, x: Tensor, y: Tensor) -> Callable[[], Tensor]:
    def loss() -> Tensor:
        space.activate(arch)
        return F.cross_entropy(space(x), y)

    return loss


def main(argv: list[str] | None = None) -> None:
    bench = Bench("parsec_memory", "Saved-activation peak and step time of PARSEC's weight step (K archs, each "
                  "forward+backward before the next) over one arch's, next to an all-ops DARTS mixed cell.")
    args = bench.parse(argv)
    channels, layers, batch = (8, 5, 16) if args.quick else (16, 8, 32)
    steps, timed_steps, rounds, reps = (1, 1, 2, 1) if args.quick else (3, 2, 6, 1)
    bench.settings.update({"space": f"DartsCellSpace(init_channels={channels}, layers={layers}, input_size={SIZE}, "
                                    f"7 ops)", "batch": batch, "K": list(KS), "memory_step_indices": steps,
                           "timed_step_indices": timed_steps,
                           "rounds": rounds, "reps_per_round": reps})
    gen = torch.Generator().manual_seed(args.seed)
    x = torch.randn(batch, 3, SIZE, SIZE, generator=gen)
    y = torch.randint(0, CLASSES, (batch,), generator=gen)

    # --- memory: PARSEC (module's training_step), K = 1 … 8, at several step indices ---
    space = make_space(channels, layers)
    module = standalone(space)
    mem: dict[int, list[tuple[int, int, int]]] = {k: [] for k in KS}
    for s in range(steps):
        st = Steps(module, x, y, step=s)
        for k in KS:
            mem[k].append(st.parsec_memory(k))
    for k in KS:
        bench.figure(f"parsec_mem_ratio_K{k}", spread(p / big for p, big, _ in mem[k])["max"])
    bench.figure("parsec_mem_ratio", max(p / big for k in KS for p, big, _ in mem[k]))
    bench.figure("parsec_mem_ratio_vs_median_arch_K8", spread(p / med for p, _, med in mem[max(KS)])["median"])
    one_arch = [big for _, big, _ in mem[1]]
    bench.figure("one_arch_peak_MiB", spread(one_arch)["median"] / 2**20)
    bench.target("parsec_mem_ratio", "<=", 1.3)

    # --- memory: DARTS mixed cells, 2, 4 and 7 candidate ops ---
    for n_ops in (2, 4, len(DARTS_OPS)):
        sp = make_space(channels, layers, n_ops).train()
        alphas = darts_alphas(sp, gen)
        params = list(sp.parameters()) + list(alphas.values())
        ones = [saved_activation_bytes(_one_arch_loss(sp, sp.sample(gen), x, y), params) for _ in range(3)]

        def darts_loss(sp: DartsCellSpace = sp, alphas: dict = alphas) -> Tensor:
            with mixed_cells(sp, alphas):
                return F.cross_entropy(sp(x), y)

        darts = saved_activation_bytes(darts_loss, params)
        bench.figure(f"darts_mem_ratio_{n_ops}_ops", darts / spread(ones)["median"])
        if n_ops == len(DARTS_OPS):
            bench.figure("darts_saved_MiB", darts / 2**20)
        del sp, alphas, params

    # --- time: PARSEC step with K archs / one arch's step (mean over the same K archs) ---
    step_ratios: dict[int, list[float]] = {k: [] for k in KS}
    for s in range(timed_steps):
        st = Steps(module, x, y, step=100 + s)
        fns = {f"parsec_{k}": st.parsec(k) for k in KS} | {f"single_{k}": st.singles(k) for k in KS}
        times = interleaved(fns, rounds, reps, warmup=1)
        for k in KS:
            step_ratios[k] += ratios(times[f"parsec_{k}"], [t / k for t in times[f"single_{k}"]])
        if s == 0:
            bench.figure("one_arch_step_s", spread(t for k in KS for t in
                                                   [v / k for v in times[f"single_{k}"]])["median"])
    for k in KS:
        sr = spread(step_ratios[k])
        bench.figure(f"step_time_ratio_K{k}", sr["median"])
        bench.figure(f"step_time_ratio_K{k}_min_max", [sr["min"], sr["max"]])
        bench.figure(f"step_time_per_arch_K{k}", sr["median"] / k)

    bench.note("The PARSEC step is PARSECModule.training_step itself on a stand-in trainer (single process: "
               "strategy.reduce is the identity, manual_backward is loss.backward(), clip_gradients is "
               "clip_grad_norm_, its own configure_optimizers' SGD and cosine schedule, logging off, prior step off).")
    bench.note("parsec_mem_ratio_K*: peak live saved-activation bytes over the K-arch step / the same peak of the "
               "largest of the same K archs' forward+backward alone (worst over the step indices); "
               "parsec_mem_ratio: worst over all K. "
               "vs_median_arch: the same peak over the median arch's, which grows with K only because a larger "
               "arch is likelier among more samples.")
    bench.note("darts_mem_ratio_N_ops: a DARTS mixed-cell forward (every candidate op on every edge, softmax-weighted "
               "sum; written in this benchmark, weights shared per slot and stride as in the space; pools without "
               "DARTS' affine-free BatchNorm) over the median of 3 sampled archs' saved bytes on the same space.")
    bench.note("step_time_ratio_K*: median per-round time of a K-arch PARSEC step / (time of K one-arch plain steps "
               "on the same archs / K): ≈ K is ideal; step_time_per_arch_K* divides it by K (overhead per arch).")
    bench.emit()


if __name__ == "__main__":
    main()
