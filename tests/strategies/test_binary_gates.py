"""ProxylessNAS's binary-gate estimator: the forward is the sampled path, the gradient the paper's formula, its
expectation the mixed objective's gradient (full and two-path modes), the two-path rescale, the zero op."""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_nas.nn import LayerChoice
from lightning_nas.spaces.mobilenet import MobileNetSpace
from lightning_nas.strategies import BinaryGates, GateSample, rescale_logits_, sample_gates


def _mobilenet() -> MobileNetSpace:
    torch.manual_seed(0)
    return MobileNetSpace(num_classes=3, input_size=8, width_mult=0.25, stage_channels=(8, 8), stage_depths=(2, 1),
                          stage_strides=(1, 2), head_channels=16, stem_channels=8, first_block_channels=8)


# --- the estimator ------------------------------------------------------------------------
def _problem() -> tuple[LayerChoice, Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(0)
    choice = LayerChoice([nn.Linear(4, 4) for _ in range(4)], "d").double()
    for p in choice.parameters():
        p.data = torch.randn(p.shape, generator=g, dtype=torch.float64)
    x, target = torch.randn(5, 4, generator=g, dtype=torch.float64), torch.randn(5, 4, generator=g, dtype=torch.float64)
    alpha = torch.randn(4, generator=g, dtype=torch.float64)
    return choice, x, target, alpha


def _loss(out: Tensor, target: Tensor) -> Tensor:
    return ((out - target) ** 2).sum()  # quadratic: its gradient is affine in the output


def _estimate(choice: LayerChoice, x: Tensor, target: Tensor, alpha: Tensor, sample: GateSample) -> Tensor:
    a = alpha.clone().requires_grad_()
    with BinaryGates({"d": [choice]}, {"d": a}, {"d": sample}):
        out = choice(x)
    _loss(out, target).backward()
    return a.grad


def _mixed_gradient(choice: LayerChoice, x: Tensor, target: Tensor, alpha: Tensor, subset: list[int]) -> Tensor:
    a = alpha.clone().requires_grad_()
    p = torch.softmax(a[subset], 0)
    mixed = sum(p[k] * choice.candidate(j)(x) for k, j in enumerate(subset))
    _loss(mixed, target).backward()
    return a.grad


def test_gated_forward_is_exactly_the_sampled_path_and_gradient_is_the_papers_formula():
    choice, x, target, alpha = _problem()
    sample = GateSample((2, 0), 0)
    choice.set_active("0")
    plain = choice(x)
    grad = _estimate(choice, x, target, alpha, sample)
    a = alpha.clone().requires_grad_()
    with BinaryGates({"d": [choice]}, {"d": a}, {"d": sample}):
        assert torch.equal(choice(x), plain)  # the forward value is the sampled path, bit for bit
    dl_dout = 2 * (plain - target)
    dl_dg = {j: (dl_dout * choice.candidate(j)(x)).sum() for j in (2, 0)}
    p = torch.softmax(alpha[[2, 0]], 0)
    expected = torch.zeros(4, dtype=torch.float64)
    for i, j in itertools.product(range(2), range(2)):
        expected[[2, 0][i]] += dl_dg[[2, 0][j]] * p[j] * (float(i == j) - p[i])
    torch.testing.assert_close(grad, expected)
    assert choice._forward_hooks == {}  # the gates leave no hook behind


def test_full_mode_expectation_is_the_mixed_objectives_gradient():
    """E_a[ĝ] = ∇_α L(Σ_j p_j o_j) exactly when ∇L is affine in the output (E[o_a] = Σ p_j o_j)."""
    choice, x, target, alpha = _problem()
    p = torch.softmax(alpha, 0)
    est = {a: _estimate(choice, x, target, alpha, GateSample((0, 1, 2, 3), a)) for a in range(4)}
    exact = sum(p[a] * est[a] for a in range(4))
    torch.testing.assert_close(exact, _mixed_gradient(choice, x, target, alpha, [0, 1, 2, 3]))
    # Monte-Carlo through the real sampler
    gen = torch.Generator().manual_seed(1)
    draws = torch.stack([est[sample_gates(p, "full", gen).active] for _ in range(4000)])
    se = draws.std(0) / 4000**0.5
    assert ((draws.mean(0) - exact).abs() <= 4 * se + 1e-9).all()


def test_two_path_expectation_is_the_pair_mixed_gradient():
    """Given the pair S, E_c[ĝ] = ∇_α L(Σ_{j∈S} p̃_j o_j); overall E[ĝ] = Σ_S P(S) of that."""
    choice, x, target, alpha = _problem()
    p = torch.softmax(alpha, 0)
    target_grad = torch.zeros(4, dtype=torch.float64)
    est = {}
    for a, b in itertools.combinations(range(4), 2):
        pt = p[[a, b]] / p[[a, b]].sum()
        est[(a, b, a)] = est[(b, a, a)] = _estimate(choice, x, target, alpha, GateSample((a, b), a))
        est[(a, b, b)] = est[(b, a, b)] = _estimate(choice, x, target, alpha, GateSample((a, b), b))
        conditional = pt[0] * est[(a, b, a)] + pt[1] * est[(a, b, b)]
        torch.testing.assert_close(conditional, _mixed_gradient(choice, x, target, alpha, [a, b]))
        prob_pair = p[a] * p[b] / (1 - p[a]) + p[b] * p[a] / (1 - p[b])
        target_grad += prob_pair * conditional
    gen = torch.Generator().manual_seed(2)
    samples = [sample_gates(p, "two_path", gen) for _ in range(6000)]
    draws = torch.stack([est[(*s.involved, s.active)] for s in samples])
    se = draws.std(0) / len(samples) ** 0.5
    assert ((draws.mean(0) - target_grad).abs() <= 4 * se + 1e-9).all()


def test_two_path_rescale_keeps_unsampled_probabilities():
    choice, x, target, _ = _problem()
    alpha = nn.Parameter(torch.randn(4, dtype=torch.float64, generator=torch.Generator().manual_seed(5)))
    opt = torch.optim.Adam([alpha], lr=0.1, betas=(0.0, 0.999))
    gen = torch.Generator().manual_seed(3)
    for _ in range(10):
        before = torch.softmax(alpha.detach(), 0)
        sample = sample_gates(before, "two_path", gen)
        opt.zero_grad()
        with BinaryGates({"d": [choice]}, {"d": alpha}, {"d": sample}):
            _loss(choice(x), target).backward()
        old = alpha.detach()[list(sample.involved)].clone()
        opt.step()
        rescale_logits_(alpha, sample.involved, old)
        after = torch.softmax(alpha.detach(), 0)
        others = [k for k in range(4) if k not in sample.involved]
        torch.testing.assert_close(after[others], before[others], atol=1e-6, rtol=0)
        assert not torch.allclose(after, before)


def test_zero_op_gets_no_update_when_sampled():
    space = _mobilenet()
    choices = {n: [m for m in space.choice_modules() if getattr(m, "name", None) == n] for n in space.decisions()}
    logits = {n: nn.Parameter(torch.zeros(len(v))) for n, v in space.decisions().items()}
    zero, k3 = space.decisions()["blocks.0.op"].index("zero"), 0
    samples = {"blocks.0.op": GateSample((zero, k3), zero), "blocks.1.op": GateSample((k3, zero), k3),
               "blocks.2.op": GateSample((0, 1), 1)}
    with BinaryGates(choices, logits, samples):
        F.cross_entropy(space(torch.randn(4, 3, 8, 8)), torch.arange(4) % 3).backward()
    assert logits["blocks.0.op"].grad is None  # the block returned its input: no gate ran
    grad = logits["blocks.1.op"].grad  # a zero beside a real op: its gate gradient ⟨∂L/∂out, 0⟩ is zero
    assert grad is not None and torch.isclose(grad[k3], -grad[zero]) and grad[1:-1].abs().sum() == 0
