"""The cost side of ProxylessNAS's latency-aware arch loss: which latency table, the per-candidate costs, the target.

A recipe names a latency table by a template (``{device}`` and ``{batch_size}`` filled in, :func:`table_path`);
:func:`latency_table_for` loads it, or measures and saves it when it is missing and the recipe names a device,
and checks that it fits the space either way. :class:`CandidateCosts` turns a table (or the MACs tables) into
an expected cost differentiable in the arch logits; :func:`cost_target` checks or derives the target ``T``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lightning_nas.errors import PrerequisiteError

__all__ = ["CandidateCosts", "cost_target", "latency_table_for", "table_path"]


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


def table_path(template: str, device: str | None, batch_size: int) -> str:
    """``template`` with ``{device}`` and ``{batch_size}`` filled in.

    Raises:
        PrerequisiteError: another field, or ``{device}`` without a ``latency_device``.
    """
    fields: dict[str, Any] = {"batch_size": batch_size, **({"device": device} if device else {})}
    try:
        return template.format_map(fields)
    except (KeyError, IndexError, ValueError) as err:
        raise PrerequisiteError(f"latency_table {template!r} has a field this module cannot fill ({err}): use "
                                "{device} (with latency_device set) and {batch_size} only") from None


def latency_table_for(space: Any, template: str, latency_device: str | None, batch_size: int) -> tuple[Any, str]:
    """The latency table at ``template`` (fields filled in) and its path, checked against ``space`` before any
    work; measured on ``latency_device`` and saved first when the file is missing.

    Raises:
        PrerequisiteError: a table of another space, batch size or device, or one to measure on CUDA without a GPU.
        MissingFileError: a missing table and no ``latency_device`` to measure it on.
    """
    from lightning_nas.cost import LatencyTable

    device = None if latency_device is None else torch.device(latency_device).type
    path = table_path(template, device, batch_size)
    if not Path(path).exists() and device is not None:
        if device == "cuda" and not torch.cuda.is_available():
            raise PrerequisiteError(
                f"latency table {path} does not exist and this recipe measures it on CUDA (latency_device=cuda), "
                "but this machine has no CUDA GPU: run it on a GPU machine, or measure the table on this CPU with "
                "--model.init_args.latency_device=cpu (and --model.init_args.latency_batch_size=1 for a quick one)")
        table = LatencyTable.build(space, batch_size, device)
        if int(os.environ.get("RANK", "0")) == 0:  # every rank measures for itself; rank 0 keeps the file
            table.save(path)
    else:
        table = LatencyTable.load(path, batch_size, device or "cpu")
    # a table measured here is checked too: the same rule for every table, whoever made it
    table.check(space, batch_size if device else None, device, path)
    return table, path


def cost_target(lo: float, hi: float, unit: str, target: float | None, fraction: float | None,
                loss_type: str) -> float:
    """The target ``T`` of a space whose archs cost ``lo`` to ``hi``: ``target``, or ``lo + fraction · (hi − lo)``.

    Raises:
        ValueError: no target, a fraction outside (0, 1), a target below the cheapest arch, or costs at most 1 for
            the ``mul`` loss (``log T`` would not be positive).
    """
    if fraction is not None:
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"target_fraction must be in (0, 1) of the space's cost range, got {fraction}")
        target = lo + fraction * (hi - lo)  # a target that fits whatever device measured the table
    if target is None:
        raise ValueError(f"a latency-aware search needs target_latency (this space spans {lo:.4g} to "
                         f"{hi:.4g} {unit})")
    if target < lo:
        raise ValueError(f"target_latency {target:.4g} {unit} is below the space's fastest arch "
                         f"({lo:.4g} {unit}; slowest {hi:.4g}): pick a target inside that range")
    if loss_type == "mul" and (target <= 1 or lo <= 1):
        raise ValueError(f"loss_type='mul' uses log E[LAT] / log T, which needs costs above 1 {unit}; the "
                         f"space's range is {lo:.4g} to {hi:.4g}: use loss_type='add' or a larger unit")
    return target
