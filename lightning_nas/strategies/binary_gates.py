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
    "CandidateCosts",
    "GateSample",
    "choices_by_decision",
    "gate_values",
    "inactive_parameters",
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
                choice.set_active(choice.keys[sample.active])
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
                        other = module._modules_list[j](args[0])
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


def inactive_parameters(space: nn.Module, cache: dict[tuple[int, int], list[nn.Parameter]]) -> list[nn.Parameter]:
    """Parameters of the ``LayerChoice`` candidates the active path does not run (``cache`` is reused)."""
    out: list[nn.Parameter] = []
    for choice in space.choice_modules():
        if isinstance(choice, LayerChoice) and not isinstance(choice._index, Tensor):
            key = (id(choice), choice._index)
            if key not in cache:
                active = {id(p) for p in choice._modules_list[choice._index].parameters()}
                cache[key] = [p for p in choice.parameters() if id(p) not in active]
            out.extend(cache[key])
    return out


class CandidateCosts:
    """Per-candidate costs of every decision, for an expected cost that is differentiable in ``α``.

    ``E[cost] = fixed + Σ_d Σ_j p_dj · cost_dj``: exact for cost models additive over units with one
    decision each (a MobileNet block). Built once from a :class:`~lightning_nas.cost.LatencyTable` (ms)
    or from the MACs tables.

    Args:
        fixed: the cost outside the decisions' units.
        costs: ``{decision: [cost of each value, in the decision's order]}``.
        unit: ``"ms"`` or ``"MACs"``.
    """

    def __init__(self, fixed: float, costs: Mapping[str, Sequence[float]], unit: str) -> None:
        self.fixed, self.unit = float(fixed), unit
        self.costs = {k: [float(c) for c in v] for k, v in costs.items()}
        self._tensors: dict[tuple[str, str], Tensor] = {}

    @classmethod
    def from_latency_table(cls, table: Any, decisions: Mapping[str, Sequence[Any]]) -> CandidateCosts:
        costs = {}
        for name, values in decisions.items():
            per_value = table.candidate_ms(name)
            if per_value is None:
                raise ValueError(f"latency table has no unit whose only decision is {name!r}; ProxylessNAS's "
                                 "expected latency needs one decision per unit (rebuild the table for this space)")
            costs[name] = [per_value[v] for v in values]
        covered = sum(1 for u in table.units if len(u["keys"]) == 1 and u["keys"][0] in decisions)
        if covered != len(table.units):
            raise ValueError("latency table has units outside this space's decisions; rebuild it for this space")
        return cls(table.fixed_ms, costs, "ms")

    @classmethod
    def from_macs(cls, space: Any, decisions: Mapping[str, Sequence[Any]]) -> CandidateCosts:
        from lightning_nas.cost import cost_table

        table = cost_table(space)
        costs: dict[str, list[float]] = {}
        for (name, _, keys), unit_table in zip(table.units, table.tables):
            if len(keys) != 1 or keys[0] not in decisions:
                raise ValueError(f"cost unit {name!r} has decisions {keys}; ProxylessNAS's expected cost needs "
                                 "exactly one op decision per unit")
            costs[keys[0]] = [unit_table[(v,)].macs for v in decisions[keys[0]]]
        missing = [k for k in decisions if k not in costs]
        if missing:
            raise ValueError(f"decisions {missing[:4]} lie in no cost unit of {space.space_name}")
        return cls(table.fixed.macs, costs, "MACs")

    def tensor(self, name: str, device: torch.device) -> Tensor:
        """The cost vector of decision ``name`` on ``device`` (cached)."""
        key = (name, str(device))
        if key not in self._tensors:
            self._tensors[key] = torch.tensor(self.costs[name], dtype=torch.float32, device=device)
        return self._tensors[key]

    def expected(self, probs: Mapping[str, tuple[Tensor, Sequence[int]]]) -> Tensor:
        """``fixed + Σ_d Σ_{j∈S_d} p_dj cost_dj`` for ``{decision: (probabilities over S_d, S_d)}``."""
        total: Tensor | float = self.fixed
        for name, (p, index) in probs.items():
            costs = self.tensor(name, p.device)[torch.tensor(list(index), device=p.device)]
            total = total + (p * costs).sum()
        return total if isinstance(total, Tensor) else torch.tensor(total)

    def of(self, arch: Mapping[str, Any], decisions: Mapping[str, Sequence[Any]]) -> float:
        """The cost of one arch (a sum of lookups)."""
        return self.fixed + sum(self.costs[k][list(decisions[k]).index(arch[k])] for k in self.costs)


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
