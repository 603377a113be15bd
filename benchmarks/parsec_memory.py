"""Training memory and step time of PARSEC's weight step (``K`` archs, one at a time) on the DARTS cell space.

The PARSEC step is ``PARSECModule.training_step`` itself, run outside a ``Trainer``: the module gets a
stand-in trainer (a single-process ``strategy.reduce`` that returns its input, ``estimated_stepping_batches``),
its step index (its own ``train_batches`` counter) is set by hand, and its Lightning plumbing is replaced by
the single-process equivalents (``manual_backward`` → ``loss.backward()``, ``clip_gradients`` → ``clip_grad_norm_``,
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
- **Op weights** (``DartsCellSpace(op_weights=...)``): the supernet's parameter count and float32 MiB with
  one op per (edge, op) (``per_edge``, the default) and one op per (slot, op) shared by the slot's inputs
  (``shared``), and one arch's saved-activation bytes in each (the same: one path runs either way). Then a
  short search on digits (16 px, the official training part only: 1,000 images for the weights, the other
  437 held out), the same for both layouts: PARSEC weight steps (``training_step``, ``K`` archs, prior held
  uniform so both layouts see the same archs and batches), then the held-out accuracy of the same uniformly
  sampled archs in each layout (batch-statistics BatchNorm, as ``PARSECModule.score_archs``).
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
from lightning_nas.modules.parsec import PARSECModule, frozen_bn_statistics, sample_indices
from lightning_nas.seeding import step_generator
from lightning_nas.spaces import DartsCellSpace
from lightning_nas.spaces.darts import CELL_TYPES, OP_WEIGHTS, SearchCell, edge_key
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


def make_space(channels: int, layers: int, n_ops: int = len(DARTS_OPS), op_weights: str = "per_edge",
               size: int = SIZE) -> DartsCellSpace:
    return DartsCellSpace(num_classes=CLASSES, input_size=size, init_channels=channels, layers=layers,
                          ops=DARTS_OPS[:n_ops], op_weights=op_weights)


def standalone(space: DartsCellSpace, steps: int = 10**9) -> PARSECModule:
    """A ``PARSECModule`` whose ``training_step`` runs without a ``Trainer`` (single process, no prior step)."""
    module = PARSECModule(space, K=1, prior_update_every=10**9).train()
    module._trainer = SimpleNamespace(  # what training_step / configure_optimizers read from the trainer
        estimated_stepping_batches=steps,
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
            self.module.train_batches = self.step + 1  # batch_step == self.step, as a Trainer's batch hook sets it
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
                    ops = [bank.ops[edge_key(j, n) if bank.per_edge else n] for n in bank.op_names]
                    terms += [w[o] * op(h) for o, op in enumerate(ops)]
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


def _digits(size: int) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """(weights split, held-out split) of the official digits training part (the test part is never used)."""
    from lightning_nas.datamodules.digits import digits_test_indices, load_digits_tensors

    images, labels = load_digits_tensors(size)
    train, _ = digits_test_indices(labels)
    order = torch.tensor(train)[torch.randperm(len(train), generator=torch.Generator().manual_seed(0))]
    fit, held = order[:1000], order[1000:]
    return (images[fit], labels[fit]), (images[held], labels[held])


def held_out_accuracy(space: DartsCellSpace, archs: list[dict], x: Tensor, y: Tensor) -> list[float]:
    space.train()
    with torch.no_grad(), frozen_bn_statistics(space):
        out = []
        for arch in archs:
            space.activate(arch, validate=False)
            out.append(float((space(x).argmax(1) == y).float().mean()))
    return out


def _spread_figures(bench: Bench, key: str, values: list[float]) -> None:
    sp = spread(values)
    bench.figure(f"{key}_median", sp["median"])
    bench.figure(f"{key}_mean", sum(values) / len(values))
    bench.figure(f"{key}_min_max", [sp["min"], sp["max"]])


def sharing_study(bench: Bench, quick: bool, seed: int) -> None:
    """Short search on digits in both layouts; held-out accuracy of the same sampled archs."""
    channels, layers, size, k, batch = (4, 3, 8, 2, 32) if quick else (8, 5, 16, 4, 64)
    steps, n_archs = (6, 4) if quick else (150, 30)
    (xf, yf), (xh, yh) = _digits(size)
    archs: list[dict] = []
    acc: dict[str, list[float]] = {}
    for op_weights in OP_WEIGHTS:
        torch.manual_seed(seed)
        space = make_space(channels, layers, op_weights=op_weights, size=size)
        module = standalone(space, steps)
        module.hparams.K = k
        order = torch.randperm(len(yf), generator=torch.Generator().manual_seed(seed))
        for step in range(steps):
            idx = order[(step * batch) % len(order):][:batch]
            module.train_batches = step + 1  # batch_step == step
            module.training_step((xf[idx], yf[idx]), step)
        archs = archs or [space.sample(torch.Generator().manual_seed(seed + 1000 + i)) for i in range(n_archs)]
        acc[op_weights] = held_out_accuracy(space, archs, xh, yh)
        _spread_figures(bench, f"sampled_arch_acc_{op_weights}", acc[op_weights])
    diff = [a - b for a, b in zip(acc["per_edge"], acc["shared"])]
    _spread_figures(bench, "sampled_arch_acc_per_edge_minus_shared", diff)
    bench.figure("sampled_arch_per_edge_better_fraction", sum(d > 0 for d in diff) / len(diff))
    bench.settings.update({"sharing_study": f"digits {size} px, DartsCellSpace(init_channels={channels}, "
                                            f"layers={layers}), K={k}, batch={batch}, {steps} weight steps, "
                                            f"{n_archs} archs scored on 437 held-out images"})


def op_weight_memory(bench: Bench, channels: int, layers: int, x: Tensor, y: Tensor, gen: torch.Generator) -> None:
    """Parameters of each layout, and one arch's saved activations in each (the same archs)."""
    archs = [make_space(channels, layers).sample(gen) for _ in range(3)]
    saved, counts = {}, {}
    for op_weights in OP_WEIGHTS:
        space = make_space(channels, layers, op_weights=op_weights).train()
        counts[op_weights] = bench.figure(f"params_{op_weights}", sum(p.numel() for p in space.parameters()))
        bench.figure(f"params_MiB_{op_weights}", counts[op_weights] * 4 / 2**20)
        saved[op_weights] = [saved_activation_bytes(_one_arch_loss(space, a, x, y), list(space.parameters()))
                             for a in archs]
    bench.figure("params_ratio_per_edge_over_shared", counts["per_edge"] / counts["shared"])
    bench.figure("one_arch_saved_ratio_per_edge_over_shared",
                 spread(a / b for a, b in zip(saved["per_edge"], saved["shared"]))["max"])


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
    op_weight_memory(bench, channels, layers, x, y, gen)
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

    sharing_study(bench, args.quick, args.seed)

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
    bench.note("params_*: the supernet's parameters with op_weights='per_edge' (one op per (node, slot, input, op): "
               "the default) and 'shared' (one op per (slot, op), shared by the slot's inputs); "
               "one_arch_saved_ratio: one arch's saved activations per_edge / shared on the same 3 archs (worst). "
               "sampled_arch_acc_*: held-out accuracy (min/median/max...) of the same uniformly sampled archs after "
               "the same short PARSEC weight training (uniform prior) in each layout; per_edge_minus_shared: the "
               "paired differences.")
    bench.emit()


if __name__ == "__main__":
    main()
