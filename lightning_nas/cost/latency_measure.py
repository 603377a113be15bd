"""How a :class:`~lightning_nas.cost.LatencyTable` is measured: every unit candidate, the fixed parts (stem, head,
fixed blocks) and a few whole calibration networks, timed together in interleaved rounds
(:class:`~lightning_nas.cost.timing.RoundTimer`); the table's own noise and its calibration factor are kept in
its ``meta``.
"""

from __future__ import annotations

import itertools
import json
import platform
import statistics
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from lightning_nas.cost.timing import Progress, RoundTimer, spread
from lightning_nas.nn.choice import freeze_module

if TYPE_CHECKING:
    from lightning_nas.cost.latency import LatencyTable

__all__ = ["measure", "unit_input_shapes"]


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def measure(cls: type[LatencyTable], space: Any, table: Any, shapes: list[torch.Size], batch_size: int,
             device: torch.device, timing: tuple[int, int, int, int], max_spread: float, retries: int,
             progress: bool) -> LatencyTable:
    """One measurement of the whole table: every candidate, the fixed parts and the calibration networks,
    timed together in interleaved rounds.

    ``cls`` is :class:`~lightning_nas.cost.LatencyTable` (the caller's class); the table it returns is scaled by
    the calibration and its ``meta`` names what it was measured for (the caller adds the file format).
    """
    warmup, repeats, rounds, calibrate = timing
    jobs: list[Callable[[], Any]] = []
    slots: list[tuple[str, str]] = []
    for (name, unit, keys), shape in zip(table.units, shapes):
        x = torch.randn(shape, device=device)
        for combo in itertools.product(*(table.decisions[k] for k in keys)):
            space.activate({**_base(space), **dict(zip(keys, combo))}, validate=False)
            jobs.append(_job(freeze_module(unit).to(device).eval(), x))
            slots.append((name, json.dumps(list(combo))))
    fixed_jobs = _fixed_jobs(space, table, batch_size, device) or []
    gen = torch.Generator().manual_seed(2**31 - 1)  # not the seeds searches and benchmarks sample archs with
    archs = [space.sample(gen) for _ in range(max(0, calibrate))]
    x = torch.randn(batch_size, space.in_channels, space.input_size, space.input_size, device=device)
    nets = [_job(space.export(a).to(device).eval(), x) for a in archs]
    bar = Progress(f"latency table ({device.type}, batch {batch_size})", 0, progress)
    timer = RoundTimer(device, warmup, repeats, rounds, bar)
    bar.add(timer.rounds * (len(jobs) + len(fixed_jobs) + len(nets)))
    ms, spreads, again, still = timer.settle([*jobs, *fixed_jobs, *nets], max_spread, retries)
    units = [{"name": name, "keys": keys, "ms": {}} for name, _, keys in table.units]
    by_name = {u["name"]: u for u in units}
    for (name, combo), value in zip(slots, ms):
        by_name[name]["ms"][combo] = value
    n = len(jobs)
    fixed = sum(ms[n:n + len(fixed_jobs)]) if fixed_jobs else _fixed_by_difference(space, units, x, device, timer)
    raw = cls({}, fixed, units)
    calibration = _calibration(raw, archs, ms[n + len(fixed_jobs):])
    noise = _noise(slots, spreads[:n + len(fixed_jobs)], calibration, timer, again, max_spread,
                   {slots[i][0] for i in still if i < n})
    bar.close(f"; noisiest entry {noise['max_spread']:.0%} spread, calibration x{calibration['scale']:.3g}")
    meta = {"space": space.space_name, "fingerprint": space.fingerprint(),
            "input_size": space.input_size, "batch_size": batch_size, "device": device.type,
            "device_name": _device_name(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "warmup": warmup, "repeats": repeats, "calibration": calibration, "noise": noise}
    return raw.scaled(calibration["scale"], meta)


def _job(module: nn.Module, x: torch.Tensor) -> Callable[[], Any]:
    return lambda: module(x)


def _noise(slots: list[tuple[str, str]], spreads: list[float], calibration: dict[str, Any], timer: RoundTimer,
           again: int, max_spread: float, noisy: set[str]) -> dict[str, Any]:
    """The table's own noise: per unit the largest spread of its candidates over the rounds; warns when too large."""
    per_unit: dict[str, float] = {}
    for (name, _), value in zip(slots, spreads):
        per_unit[name] = max(per_unit.get(name, 0.0), value)
    worst = max(per_unit, key=per_unit.__getitem__) if per_unit else None
    noise = {"rounds": timer.rounds, "repeats_per_round": timer.per_round,
             "median_spread": statistics.median(spreads) if spreads else 0.0,
             "max_spread": max(spreads) if spreads else 0.0, "noisiest_unit": worst, "remeasured": again,
             "calibration_spread": spread(calibration["ratios"]) if calibration.get("ratios") else 0.0,
             "per_unit": per_unit}
    if noisy:
        name = max(noisy, key=per_unit.__getitem__)
        warnings.warn(f"latency table: {len(noisy)} unit(s) still vary by more than {max_spread:.0%} between rounds "
                      f"after re-measuring (worst {name}: {per_unit[name]:.0%}); the machine is busy, so "
                      "predictions are rough: measure on an idle machine", stacklevel=3)
    return noise


def _base(space: Any) -> dict[str, Any]:
    base = space.__dict__.get("_latency_base")
    if base is None:
        base = space.sample(torch.Generator().manual_seed(0))
        space.__dict__["_latency_base"] = base
    return base


def unit_input_shapes(space: Any, table: Any, batch_size: int) -> list[torch.Size]:
    """The input shape of each unit of the cost ``table`` in one forward pass of ``space`` (in eval mode)."""
    shapes: dict[int, torch.Size] = {}
    hooks = [u.register_forward_pre_hook(lambda m, a: shapes.__setitem__(id(m), a[0].shape)) for _, u, _ in table.units]
    try:
        space.activate(_base(space), validate=False)
        x = torch.zeros(batch_size, space.in_channels, space.input_size, space.input_size,
                        device=next(space.parameters()).device)
        with torch.no_grad():
            space(x)  # the caller has put the space in eval mode (and restores every module's mode)
    finally:
        for h in hooks:
            h.remove()
    return [shapes[id(u)] for _, u, _ in table.units]


def _fixed_parts(space: Any, table: Any) -> list[nn.Module] | None:
    """The modules outside the units (stem, head, fixed blocks), or ``None`` for a space with its own forward."""
    from lightning_nas.spaces.base import SearchSpace

    if type(space).forward is not SearchSpace.forward:
        return None
    unit_ids = {id(u) for _, u, _ in table.units}
    parts: list[nn.Module] = [space.stem]

    def walk(module: nn.Module) -> None:
        for child in module.children():
            if isinstance(child, nn.Sequential) and id(child) not in unit_ids:
                walk(child)
            elif id(child) not in unit_ids:
                parts.append(child)

    walk(space.features)
    return [*parts, space.head]


def _calibration(raw: LatencyTable, archs: list[dict[str, Any]], measured: list[float]) -> dict[str, Any]:
    """Scale factor = median over the seeded random ``archs`` of end-to-end latency / summed table entries."""
    if not archs:
        return {"scale": 1.0, "archs": 0}
    ratios = [ms / raw.predict(arch) for arch, ms in zip(archs, measured)]
    return {"scale": statistics.median(ratios), "archs": len(archs), "ratios": ratios}


def _fixed_jobs(space: Any, table: Any, batch_size: int, device: torch.device) -> list[Callable[[], Any]] | None:
    """The stem, head and fixed blocks, each as its exported module on its real input (``None``: own forward)."""
    parts = _fixed_parts(space, table)
    if parts is None:
        return None
    x = torch.randn(batch_size, space.in_channels, space.input_size, space.input_size, device=device)
    shapes: dict[int, torch.Size] = {}
    hooks = [p.register_forward_pre_hook(lambda m, a: shapes.__setitem__(id(m), a[0].shape)) for p in parts]
    try:
        space.activate(_base(space), validate=False)
        with torch.no_grad():
            space.to(device)(x)
    finally:
        for h in hooks:
            h.remove()
    return [_job(freeze_module(p).to(device).eval(), torch.randn(shapes[id(p)], device=device)) for p in parts]


def _fixed_by_difference(space: Any, units: list[dict[str, Any]], x: torch.Tensor, device: torch.device,
                         timer: RoundTimer) -> float:
    """For a space with its own forward: the whole exported network minus its units (median of 3 archs)."""
    gen = torch.Generator().manual_seed(1)
    archs = [space.sample(gen) for _ in range(3)]
    timer.progress.add(timer.rounds * len(archs))
    wholes = timer.time([_job(space.export(a).to(device).eval(), x) for a in archs])
    rests = [statistics.median(w) - sum(u["ms"][json.dumps([a[k] for k in u["keys"]])] for u in units)
             for a, w in zip(archs, wholes)]
    return max(0.0, statistics.median(rests))
