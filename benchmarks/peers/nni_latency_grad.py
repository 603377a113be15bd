"""Claim check (a): does NNI 3.0's latency/cost penalty give the ProxylessNAS arch parameters a gradient?

Runs in the NNI venv:  /work/nni-venv/bin/python benchmarks/peers/nni_latency_grad.py

What NNI 3.0 has: the ``Proxyless`` strategy (``nni.nas.strategy.Proxyless``, a ``DARTS`` subclass) takes no
latency/cost argument; NNI's cost-aware losses are ``nni.nas.oneshot.pytorch.profiler.ProfilerPenalty``
subclasses. The one for differentiable/Proxyless search is ``ExpectationProfilerPenalty``, which profiles the
expected cost under the architecture distribution ``export_probs()`` (NNI wires penalties into its own
training loop only for ENAS, as a reward). We build ``ProxylessNAS`` (width 0.25) as a Proxyless supernet,
an ``ExpectationProfilerPenalty`` over NNI's ``FlopsProfiler`` (an ``ExpressionProfiler``: the expected
FLOPs stand in for the expected latency, the same machinery), and compare the arch parameters' gradients
of ``CE`` and of ``penalty(CE, export_probs())``. The claim "the penalty adds no gradient to the arch
parameters" is TRUE if they are identical (the penalty's term has no autograd path to the alphas).
Last stdout line: one JSON object.
"""

from __future__ import annotations

import inspect
import json
import warnings

warnings.filterwarnings("ignore")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import nni  # noqa: E402
from nni.nas.hub.pytorch import ProxylessNAS  # noqa: E402
from nni.nas.oneshot.pytorch.profiler import ExpectationProfilerPenalty  # noqa: E402
from nni.nas.oneshot.pytorch.supermodule.base import BaseSuperNetModule  # noqa: E402
from nni.nas.profiler.pytorch.flops import FlopsProfiler  # noqa: E402
from nni.nas.strategy import Proxyless  # noqa: E402


def main() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    space = ProxylessNAS(num_labels=10, width_mult=0.25)
    space.eval()  # the profiler traces with batch 1: BN needs eval mode
    profiler = FlopsProfiler(space, torch.randn(1, 3, 32, 32))
    space.train()
    strategy = Proxyless()
    supernet = strategy.mutate_model(space)
    modules = [m for m in supernet.modules() if isinstance(m, BaseSuperNetModule)]
    alphas = {n: p for n, p in supernet.named_parameters() if "_arch_alpha" in n}
    if not alphas:  # arch parameters are held by the strategy's memo
        alphas = {k: v for k, v in strategy._arch_parameters.items()}

    def export_probs() -> dict:
        result: dict = {}
        for m in modules:
            result.update(m.export_probs(memo=result))
        return result

    probs = export_probs()
    baseline = 0.5 * profiler.profile({k: max(v, key=v.get) for k, v in probs.items()})
    penalty = ExpectationProfilerPenalty(profiler, baseline=baseline, scale=10.0)

    memo: dict = {}
    for m in modules:
        memo.update(m.resample(memo=memo))
    out = supernet(x)
    ce = F.cross_entropy(out, y)
    total, details = penalty(ce, export_probs())
    names = list(alphas)
    g_ce = torch.autograd.grad(ce, [alphas[n] for n in names], allow_unused=True, retain_graph=True)
    g_total = torch.autograd.grad(total, [alphas[n] for n in names], allow_unused=True, retain_graph=True)
    diff = 0.0
    nonzero_ce = 0
    for a, b in zip(g_ce, g_total):
        a = torch.zeros(1) if a is None else a
        b = torch.zeros(1) if b is None else b
        diff = max(diff, float((a - b).abs().max()))
        nonzero_ce += int(bool(a.abs().sum() > 0))
    pen_term = details["normalized_penalty"]
    pen_has_graph = isinstance(pen_term, torch.Tensor) and pen_term.requires_grad
    # The gradient the penalty term itself gives the alphas (None: not connected at all).
    pen_grad_norm = None
    if pen_has_graph:
        gp = torch.autograd.grad(pen_term, [alphas[n] for n in names], allow_unused=True)
        pen_grad_norm = float(sum(0.0 if g is None else g.norm() for g in gp))
        per_alpha = {n: (0.0 if g is None else float(g.abs().max())) for n, g in zip(names, gp)}
    else:
        per_alpha = {n: 0.0 for n in names}
    # which arch parameters does the penalty reach? the op choices (kernel x expansion, 6 values) or
    # the depth gates of the Repeat blocks (2 values: skip/keep, for blocks past the minimum depth)
    sizes = {n: alphas[n].numel() for n in names}
    op_alphas = [n for n in names if sizes[n] == 6]
    other_alphas = [n for n in names if sizes[n] != 6]
    op_reached = [n for n in op_alphas if per_alpha[n] > 0]
    other_reached = [n for n in other_alphas if per_alpha[n] > 0]
    claim_true = (not pen_has_graph or (pen_grad_norm or 0.0) == 0.0) and diff == 0.0 \
        and float(details["penalty"]) != 0.0
    narrower_claim_true = not op_reached and bool(op_alphas)
    print(json.dumps({
        "claim": "NNI 3.0's (Proxyless) latency/cost penalty adds no gradient to the arch parameters",
        "nni": nni.__version__, "torch": torch.__version__, "claim_true": bool(claim_true),
        "evidence": {
            "proxyless_strategy_init_args": str(inspect.signature(Proxyless.__init__)),
            "penalty_class": "nni.nas.oneshot.pytorch.profiler.ExpectationProfilerPenalty(FlopsProfiler)",
            "expected_flops_penalty": float(details["penalty"]),
            "normalized_penalty_type": type(pen_term).__name__,
            "normalized_penalty_value": float(pen_term),
            "normalized_penalty_requires_grad": bool(pen_has_graph),
            "penalty_grad_norm_on_alphas": pen_grad_norm,
            "loss_ce": float(ce), "loss_with_penalty": float(total),
            "n_arch_parameters": len(names),
            "n_alphas_with_nonzero_ce_grad": nonzero_ce,
            "max_abs_grad_difference_total_vs_ce": diff,
            "op_choice_alphas (6 candidates)": len(op_alphas),
            "op_choice_alphas_reached_by_penalty": len(op_reached),
            "other_alphas (depth/skip gates)": len(other_alphas),
            "other_alphas_reached_by_penalty": len(other_reached),
            "alpha_sizes": sorted(set(sizes.values())),
            "per_alpha_penalty_grad_absmax": {n: round(v, 6) for n, v in per_alpha.items()},
            "why": ("ProxylessMixedLayer.export_probs (inherited from DifferentiableMixedLayer) returns "
                    "softmax(alpha).cpu().tolist(), Python floats; only ProxylessMixedRepeat.export_probs keeps "
                    "tensors, for the depth distribution"),
        },
        "narrower_claim": "the penalty adds no gradient to the op-choice (kernel/expansion) arch parameters; "
                          "only the depth gates receive one",
        "narrower_claim_true": bool(narrower_claim_true),
    }))


if __name__ == "__main__":
    main()
