"""MACs, parameters and BitOps of an arch, from per-unit lookup tables.

A space is cut into *units* (by default, each block of ``space.features`` that owns decisions)
whose cost depends only on their own decisions, plus a fixed remainder (stem, head, ...). Each
unit's cost is counted once per combination of its decisions with PyTorch's
``torch.utils.flop_counter.FlopCounterMode`` on the real tensor shapes — no hand-written
formulas — and an arch's cost is a sum of lookups: O(decisions), no forward pass.

MACs are multiply-accumulates (half of FlopCounterMode's FLOPs): what the NAS papers call
"FLOPs". BitOps = MACs × weight bits × activation bits, summed per layer.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lightning_nas.arch import Arch
from lightning_nas.nn.choice import Choice
from lightning_nas.nn.quantize import FLOAT_BITS

__all__ = ["CostTable", "bitops", "cost_range", "cost_table", "count_macs", "cost_of", "macs", "params"]

MAX_UNIT_COMBOS = 4096
BitKey = tuple[Any, Any]  # (weight-bits decision name, act-bits decision name) or fixed (wbits, abits)


@dataclass
class UnitCost:
    """The cost of one unit for one combination of its decisions."""

    macs: float = 0.0
    params: float = 0.0
    bit_macs: dict[BitKey, float] = field(default_factory=dict)

    def add_layer(self, key: BitKey, layer_macs: float) -> None:
        self.macs += layer_macs
        self.bit_macs[key] = self.bit_macs.get(key, 0.0) + layer_macs


def count_macs(module: nn.Module, *inputs: torch.Tensor) -> float:
    """Multiply-accumulates of one forward of ``module`` counted by ``FlopCounterMode`` (FLOPs / 2)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(*inputs)
    return counter.get_total_flops() / 2


def _meta_state(module: nn.Module) -> dict[str, torch.Tensor]:
    named = itertools.chain(module.named_parameters(remove_duplicate=False), module.named_buffers())
    return {n: torch.empty_like(t, device="meta") for n, t in named}


def _run_on_meta(module: nn.Module, shape: tuple[int, ...]) -> None:
    """One forward on the meta device: real shapes, real dispatch (FlopCounterMode counts it), no arithmetic."""
    torch.func.functional_call(module, _meta_state(module), (torch.empty(shape, device="meta"),), strict=False)


def _meta_macs(layer: nn.Module, shape: tuple[int, ...]) -> float:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        _run_on_meta(layer, shape)
    return counter.get_total_flops() / 2


def _bit_key(layer: nn.Module) -> BitKey:
    bits = getattr(layer, "bits", None)
    if bits is not None:
        return (bits.weight_name, bits.act_name)
    return (int(getattr(layer, "wbits", FLOAT_BITS)), int(getattr(layer, "abits", FLOAT_BITS)))


def _is_layer(module: nn.Module) -> bool:
    return isinstance(module, (nn.Conv2d, nn.Linear))


def _leaf_layers(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if _is_layer(m)]


def _leaves(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if _is_layer(m) or next(m.children(), None) is None]


def _active_shape(layer: nn.Module, shape: torch.Size) -> tuple[int, ...]:
    """The input shape ``layer`` sees on the active path (dynamic layers take ``active_in`` channels)."""
    active_in = getattr(layer, "active_in", None)
    return tuple(shape) if active_in is None else (shape[0], active_in, *shape[2:])


def _trace_layers(module: nn.Module, run: Any, leaves: bool = False) -> list[tuple[nn.Module, torch.Size]]:
    """Run ``run()``; record every conv/linear layer (or leaf module) of ``module`` that ran, with its input shape."""
    seen: list[tuple[nn.Module, torch.Size]] = []
    watched = _leaves(module) if leaves else _leaf_layers(module)
    hooks = [m.register_forward_pre_hook(lambda m, a: seen.append((m, a[0].shape))) for m in watched]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in hooks:
            h.remove()
    return seen


class CostTable:
    """Lookup tables of MACs, params and BitOps for one space at its input size.

    Args:
        space: the search space; its ``input_size`` and ``in_channels`` fix the shapes.

    Example::

        table = cost_table(space)
        table.macs(arch), table.params(arch), table.bitops(arch)
    """

    def __init__(self, space: Any) -> None:
        self.space = space
        self.decisions = space.decisions()
        self.bit_names = {n for m in space.modules() for n in _bit_names(m)}
        self.units = self._units()
        self.width_names = {n for m in space.modules() for n in _width_names(m)}
        self._layer_cache: dict[Any, float] = {}
        self.tables: list[dict[tuple[Any, ...], UnitCost]] = []
        self.fixed = UnitCost()
        self._build()

    def _units(self) -> list[tuple[str, nn.Module, list[str]]]:
        units = []
        for name, module, keys in self.space.cost_units():
            keys = [k for k in keys if k not in self.bit_names]
            combos = 1
            for k in keys:
                combos *= len(self.decisions[k])
            if combos > MAX_UNIT_COMBOS:
                raise ValueError(f"cost unit {name!r} has {combos} decision combinations; split it in cost_units()")
            units.append((name, module, keys))
        return units

    def _layer_macs(self, layer: nn.Module, shape: torch.Size) -> float:
        key = (id(layer), tuple(shape), getattr(layer, "active_in", None), getattr(layer, "active_out", None))
        if key not in self._layer_cache:
            self._layer_cache[key] = _meta_macs(layer, tuple(shape))
        return self._layer_cache[key]

    def _build(self) -> None:
        space = self.space
        was_training, previous = space.training, space.active_arch
        base = space.sample(torch.Generator().manual_seed(0))
        unit_inputs: dict[int, torch.Size] = {}
        hooks = [u.register_forward_pre_hook(lambda m, a: unit_inputs.__setitem__(id(m), a[0].shape))
                 for _, u, _ in self.units]
        space.eval()
        try:
            space.activate(base, validate=False)
            shape = (1, space.in_channels, space.input_size, space.input_size)
            trace = _trace_layers(space, lambda: _run_on_meta(space, shape))
            for h in hooks:
                h.remove()
            self._build_fixed(trace, base)
            for _, unit, keys in self.units:
                self.tables.append(self._build_unit(unit, keys, unit_inputs[id(unit)], base))
            self._fixed_params(base)
        finally:
            for h in hooks:
                h.remove()
            space.train(was_training)
            if previous is not None:
                space.activate(previous, validate=False)

    def _build_fixed(self, trace: list[tuple[nn.Module, torch.Size]], base: Arch) -> None:
        in_units = {id(m) for _, u, _ in self.units for m in _leaf_layers(u)}
        for layer, shape in trace:
            if id(layer) not in in_units:
                self.fixed.add_layer(_bit_key(layer), self._layer_macs(layer, shape))

    def _build_unit(self, unit: nn.Module, keys: list[str], shape: torch.Size, base: Arch) -> dict:
        """Cost of every combination of the unit's decisions.

        Which layers run, and at which spatial size, depends only on the structural decisions (ops,
        inputs), not on widths: one traced forward per structure, then per-layer counts at the active
        widths, each counted once by FlopCounterMode and cached.
        """
        table: dict[tuple[Any, ...], UnitCost] = {}
        structural = [k for k in keys if k not in self.width_names]
        traces: dict[tuple[Any, ...], list[tuple[nn.Module, torch.Size]]] = {}
        choices = [m for m in unit.modules() if isinstance(m, Choice)]
        for combo in itertools.product(*(self.decisions[k] for k in keys)):
            arch = {**base, **dict(zip(keys, combo))}
            for choice in choices:
                choice.activate_choice(arch)
            skey = tuple(arch[k] for k in structural)
            if skey not in traces:
                traces[skey] = _trace_layers(unit, lambda: _run_on_meta(unit, tuple(shape)), leaves=True)
            cost = UnitCost()
            for leaf in {id(m): m for m, _ in traces[skey]}.values():
                cost.params += self._leaf_params(leaf)
            for leaf, leaf_shape in traces[skey]:
                if _is_layer(leaf):
                    cost.add_layer(_bit_key(leaf), self._layer_macs(leaf, _active_shape(leaf, leaf_shape)))
            table[combo] = cost
        return table

    def _leaf_params(self, leaf: nn.Module) -> float:
        """Parameters ``leaf`` has once exported (active slices; BatchNorm exported with affine)."""
        if hasattr(leaf, "_active_weight"):
            w, b = leaf._active_weight()[:2]
            return float(w.numel() + (b.numel() if b is not None else 0))
        if isinstance(leaf, nn.modules.batchnorm._BatchNorm):
            return float(2 * getattr(leaf, "active", leaf.num_features))
        return float(sum(p.numel() for p in leaf.parameters(recurse=False)))

    def _fixed_params(self, base: Arch) -> None:
        total = sum(p.numel() for p in self.space.export(base).parameters())
        self.fixed.params = float(total) - sum(c.params for c in self._unit_costs(base))

    def _unit_costs(self, arch: Mapping[str, Any]) -> list[UnitCost]:
        return [table[tuple(arch[k] for k in keys)] for table, (_, _, keys) in zip(self.tables, self.units)]

    # --- lookups --------------------------------------------------------------------------
    def macs(self, arch: Mapping[str, Any]) -> float:
        return self.fixed.macs + sum(c.macs for c in self._unit_costs(arch))

    def params(self, arch: Mapping[str, Any]) -> float:
        return self.fixed.params + sum(c.params for c in self._unit_costs(arch))

    def bitops(self, arch: Mapping[str, Any]) -> float:
        return sum(_bitops(c, arch) for c in [self.fixed, *self._unit_costs(arch)])

    def range(self, metric: str) -> tuple[float, float]:
        """The smallest and largest ``metric`` (``macs``, ``params``, ``bitops``) over the whole space."""
        lo = hi = _fixed_metric(self.fixed, metric, self.decisions)
        for table in self.tables:
            values = [_unit_metric(c, metric, self.decisions) for c in table.values()]
            lo += min(v[0] for v in values)
            hi += max(v[1] for v in values)
        return lo, hi

    def to_json(self) -> str:
        doc = {"fixed": {"macs": self.fixed.macs, "params": self.fixed.params},
               "units": [{"name": n, "keys": k, "macs": {json.dumps(list(c)): v.macs for c, v in t.items()}}
                         for (n, _, k), t in zip(self.units, self.tables)]}
        return json.dumps(doc)


def _bit_names(module: nn.Module) -> list[str]:
    bits = getattr(module, "bits", None)
    return [bits.weight_name, bits.act_name] if bits is not None and hasattr(bits, "weight_name") else []


def _width_names(module: nn.Module) -> list[str]:
    widths = [getattr(module, a, None) for a in ("in_width", "out_width", "width")]
    return [w.name for w in widths if w is not None and hasattr(w, "channels")]


def _bits_of(key: BitKey, arch: Mapping[str, Any]) -> tuple[float, float]:
    w, a = key
    return (float(arch[w]) if isinstance(w, str) else float(w), float(arch[a]) if isinstance(a, str) else float(a))


def _bitops(cost: UnitCost, arch: Mapping[str, Any]) -> float:
    total = 0.0
    for key, m in cost.bit_macs.items():
        w, a = _bits_of(key, arch)
        total += m * w * a
    return total


def _extreme_bits(key: BitKey, decisions: Mapping[str, list[Any]], pick: Any) -> float:
    return float(pick(decisions[key])) if isinstance(key, str) else float(key)


def _unit_metric(cost: UnitCost, metric: str, decisions: Mapping[str, list[Any]]) -> tuple[float, float]:
    if metric == "macs":
        return cost.macs, cost.macs
    if metric == "params":
        return cost.params, cost.params
    if metric == "bitops":
        lo = sum(m * _extreme_bits(w, decisions, min) * _extreme_bits(a, decisions, min)
                 for (w, a), m in cost.bit_macs.items())
        hi = sum(m * _extreme_bits(w, decisions, max) * _extreme_bits(a, decisions, max)
                 for (w, a), m in cost.bit_macs.items())
        return lo, hi
    raise ValueError(f"unknown cost metric {metric!r}: use macs, params, bitops or latency_ms")


def _fixed_metric(cost: UnitCost, metric: str, decisions: Mapping[str, list[Any]]) -> float:
    return _unit_metric(cost, metric, decisions)[0]


def _device_of(module: nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def cost_table(space: Any) -> CostTable:
    """The space's cost table, built on first use and cached on the space."""
    table = space.__dict__.get("_cost_table")
    if table is None:
        table = CostTable(space)
        space.__dict__["_cost_table"] = table
    return table


def macs(space: Any, arch: Mapping[str, Any]) -> float:
    """Multiply-accumulates of ``arch`` at the space's input size (batch 1)."""
    return cost_table(space).macs(arch)


def params(space: Any, arch: Mapping[str, Any]) -> float:
    """Parameters of ``space.export(arch)``."""
    return cost_table(space).params(arch)


def bitops(space: Any, arch: Mapping[str, Any]) -> float:
    """Σ over layers of MACs × weight bits × activation bits (float layers count 32 × 32)."""
    return cost_table(space).bitops(arch)


def cost_of(space: Any, arch: Mapping[str, Any], metric: str, latency_table: Any = None) -> float:
    """One cost of ``arch`` by metric name: ``macs``, ``params``, ``bitops`` or ``latency_ms``."""
    if metric == "latency_ms":
        if latency_table is None:
            raise ValueError("a latency_ms cost needs a LatencyTable measured for this space (latency_table=...)")
        return latency_table.predict(arch)
    return getattr(cost_table(space), metric)(arch) if metric in ("macs", "params", "bitops") else _unknown(metric)


def _unknown(metric: str) -> float:
    raise ValueError(f"unknown cost metric {metric!r}: use macs, params, bitops or latency_ms")


def cost_range(space: Any, metric: str, latency_table: Any = None) -> tuple[float, float]:
    """The smallest and largest cost of any arch of ``space`` for ``metric``."""
    if metric == "latency_ms":
        if latency_table is None:
            raise ValueError("a latency_ms range needs a LatencyTable (latency_table=...)")
        return latency_table.range()
    return cost_table(space).range(metric)
