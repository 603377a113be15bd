"""ProxylessNAS's arch-gradient machinery as plain autograd, so DDP synchronises it.

ProxylessNAS (Cai, Zhu, Han, ICLR 2019, https://arxiv.org/abs/1812.00332) estimates the gradient of
the loss with respect to the arch logits ``α`` of a choice through *binary gates*: a forward runs one
sampled candidate ``a`` (gate ``g = one_hot(a)``), and

    ∂L/∂α_i = Σ_j ∂L/∂g_j · p_j (δ_ij − p_i),   with ∂L/∂g_j = ⟨∂L/∂out, o_j⟩,

``o_j`` the output candidate ``j`` would give. The official code obtains ``∂L/∂g_j`` inside a custom
``autograd.Function.backward`` that re-runs the candidates: DDP never sees those gradients. Here the
block output is instead built in the forward as

    out = Σ_{j ∈ S} g_j · o_j,   g = one_hot(a) + p̃ − stop_gradient(p̃),

with ``S`` the candidates involved (the sampled pair in two-path mode, all in ``full`` mode), ``p̃ =
softmax(α_S)`` and the non-sampled ``o_j`` computed under ``no_grad``. The forward value of ``g`` is
exactly ``one_hot(a)`` (``p̃ − p̃`` is exactly zero), so ``out`` is exactly ``o_a``; the backward gives
``∂L/∂g_j = ⟨∂L/∂out, o_j⟩`` and then, by the chain rule through ``p̃``, exactly the formula above.
Everything is ordinary autograd on ``α``: DDP all-reduces it like any other gradient.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from lightning_nas.nn.layer_choice import LayerChoice

__all__ = [
    "ZERO",
    "BinaryGates",
    "GateSample",
    "choices_by_decision",
    "gate_values",
    "latency_loss",
    "rescale_logits_",
    "reinforce_rewards",
    "sample_gates",
    "update_baseline",
]

ZERO = "zero"
MODES = ("two_path", "full")


@dataclass(frozen=True)
class GateSample:
    """The candidates one arch step involves for one decision.

    Attributes:
        involved: indices of the candidates whose outputs enter the gate gradient (the sampled pair, or all).
        active: the index whose output the forward uses (one of ``involved``).
    """

    involved: tuple[int, ...]
    active: int


def choices_by_decision(space: nn.Module, owner: str = "ProxylessModule") -> dict[str, list[LayerChoice]]:
    """The space's ``LayerChoice`` modules grouped by decision (a shared decision may have several).

    Raises:
        ValueError: the space has decisions that no ``LayerChoice`` owns (widths, bits, inputs).
    """
    groups: dict[str, list[LayerChoice]] = {}
    for module in space.choice_modules():
        if isinstance(module, LayerChoice):
            groups.setdefault(module.name, []).append(module)
    other = [k for k in space.decisions() if k not in groups]
    if other:
        raise ValueError(
            f"{owner} learns one logit vector per LayerChoice decision, but {space.space_name} has decisions "
            f"no LayerChoice owns: {other[:4]}{' ...' if len(other) > 4 else ''}; use a space of op choices only "
            "(e.g. MobileNetSpace without bits)."
        )
    return groups


def sample_gates(probs: Tensor, mode: str, generator: torch.Generator | None = None) -> GateSample:
    """Binarize one decision: which candidates are involved and which one runs.

    ``two_path`` (official ``two``): two candidates drawn by ``probs`` without replacement, the active
    one drawn between them by the renormalised probabilities. ``full`` (official ``full_v2``, the default
    ``--grad_binary_mode`` of ``search/imagenet_arch_search.py``): all candidates are involved, the active
    one is drawn by ``probs``.
    """
    p = probs.detach().double().cpu()
    n = p.numel()
    if n == 1:
        return GateSample((0,), 0)
    if mode == "two_path":
        pair = torch.multinomial(p, 2, replacement=False, generator=generator).tolist()
        c = int(torch.multinomial(p[pair] / p[pair].sum(), 1, generator=generator))
        return GateSample(tuple(pair), pair[c])
    if mode == "full":
        return GateSample(tuple(range(n)), int(torch.multinomial(p, 1, generator=generator)))
    raise ValueError(f"binary gate mode must be one of {MODES}, got {mode!r}")


def gate_values(alpha: Tensor, sample: GateSample) -> Tensor:
    """Straight-through gates over ``sample.involved``: forward ``one_hot(active)``, backward ``∂softmax(α_S)``."""
    index = torch.tensor(sample.involved, device=alpha.device)
    p = torch.softmax(alpha.index_select(0, index), dim=0)
    one_hot = (index == sample.active).to(p.dtype)
    return one_hot + (p - p.detach())


class BinaryGates:
    """Context manager: while open, each sampled ``LayerChoice`` outputs ``Σ_{j∈S} g_j o_j``.

    The active candidate is activated on the choice and runs with gradients; the other involved
    candidates run under ``no_grad`` (their weights get no gradient, as in the official two-path mode).
    Composition only: a forward hook on each ``LayerChoice``, removed on exit.

    Args:
        choices: the ``LayerChoice`` modules of each decision (:func:`choices_by_decision`).
        logits: the arch logits of each decision.
        samples: the :class:`GateSample` of each decision.

    Example::

        with BinaryGates(choices, logits, samples):
            loss = F.cross_entropy(space(x), y)
        loss.backward()  # logits[d].grad holds the binary-gate estimate
    """

    def __init__(self, choices: Mapping[str, Sequence[LayerChoice]], logits: Mapping[str, Tensor],
                 samples: Mapping[str, GateSample]) -> None:
        self.choices, self.logits, self.samples = choices, logits, samples
        self._handles: list[RemovableHandle] = []

    def __enter__(self) -> BinaryGates:
        for name, sample in self.samples.items():
            gates = gate_values(self.logits[name], sample)
            for choice in self.choices[name]:
                choice.active_index = sample.active
                self._handles.append(choice.register_forward_hook(self._hook(sample, gates)))
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    @staticmethod
    def _hook(sample: GateSample, gates: Tensor) -> Callable[..., Tensor]:
        def hook(module: LayerChoice, args: tuple[Tensor, ...], output: Tensor) -> Tensor:
            out = gates[sample.involved.index(sample.active)] * output
            for pos, j in enumerate(sample.involved):
                if j != sample.active:
                    with torch.no_grad():
                        other = module.candidate(j)(args[0])
                    out = out + gates[pos] * other
            return out

        return hook


def rescale_logits_(alpha: Tensor, involved: Sequence[int], old: Tensor) -> None:
    """Shift ``α_S`` by ``log(Σ_S exp α_new / Σ_S exp α_old)`` so the other candidates' probabilities stay put."""
    index = torch.tensor(list(involved), device=alpha.device)
    with torch.no_grad():
        new = alpha.index_select(0, index)
        offset = torch.logsumexp(new, 0) - torch.logsumexp(old.to(new.device), 0)
        alpha.index_copy_(0, index, new - offset)


def latency_loss(ce: Tensor, expected: Tensor, target: float, loss_type: str, alpha: float, beta: float,
                 lam: float) -> Tensor:
    """The official latency-aware arch losses.

    ``mul`` (official ``mul#log``): ``alpha · CE · (log E[LAT] / log T) ** beta``; ``alpha`` only scales
    the whole loss (with Adam it barely matters), ``beta`` sets the trade-off. ``add`` (official
    ``add#linear``): ``CE + lam · (E[LAT] − T) / T``.
    """
    if loss_type == "mul":
        return alpha * ce * (torch.log(expected) / math.log(target)) ** beta
    if loss_type == "add":
        return ce + lam * (expected - target) / target
    raise ValueError(f"loss_type must be 'mul' or 'add', got {loss_type!r}")


def reinforce_rewards(acc: Tensor, costs: Tensor | None, target: float | None, exponent: float) -> Tensor:
    """Official REINFORCE reward: ``acc × (T / LAT) ** exponent`` (plain accuracy without a cost model)."""
    if costs is None or target is None:
        return acc
    return acc * (target / costs) ** exponent


def update_baseline(baseline: float | None, mean_reward: float, decay: float) -> float:
    """Official moving baseline: the first mean reward, then ``b ← b + decay · (mean − b)``."""
    if baseline is None or math.isnan(baseline):
        return mean_reward
    return baseline + decay * (mean_reward - baseline)
