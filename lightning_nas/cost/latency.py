"""``LatencyTable``: latency of every candidate measured on a real device, summed per arch.

Blocks timed one at a time run with their weights and input hot in cache; inside a whole network they do
not, so a plain sum under-predicts end-to-end latency by a roughly constant fraction (about 11 % for a
MobileNet at batch 1 on a 2-core CPU). ``build(calibrate=n)`` therefore times ``n`` random whole exported
networks right after the blocks and scales every entry by the median ratio measured / summed (kept in
``meta["calibration"]``). One factor for all entries keeps every comparison between candidates as measured
and makes the absolute milliseconds (a latency target, a constraint) match the device.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lightning_nas.cost.tables import cost_table
from lightning_nas.nn.choice import freeze_module

__all__ = ["LatencyTable", "measure_ms"]

LATENCY_FORMAT = 1


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_ms(fn: Callable[[], Any], device: torch.device | str = "cpu", warmup: int = 5, repeats: int = 20) -> float:
    """Median wall time of ``fn()`` in milliseconds after ``warmup`` calls (CUDA synchronised)."""
    device = torch.device(device)
    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


class LatencyTable:
    """Per-unit latencies of a space at one input size, batch size and device; an arch's latency is their sum.

    Build one with :meth:`build` (measures every candidate of every unit as the exported, plain
    layers it becomes), save and load it as JSON. A table is tied to its space's fingerprint,
    input size, batch size and device: using it elsewhere is refused.
    """

    def __init__(self, meta: dict[str, Any], fixed_ms: float, units: list[dict[str, Any]]) -> None:
        self.meta, self.fixed_ms, self.units = meta, fixed_ms, units

    # --- building -------------------------------------------------------------------------
    @classmethod
    def build(cls, space: Any, batch_size: int = 1, device: str | torch.device = "cpu", warmup: int = 5,
              repeats: int = 20, calibrate: int = 5) -> LatencyTable:
        """Measure every unit candidate and the fixed parts of ``space`` on ``device``.

        Args:
            space: the search space (moved to ``device`` for the measurement, then back).
            batch_size: the batch the latency is measured for.
            device: the target device (``"cpu"``, ``"cuda"``).
            warmup: untimed calls before timing each candidate.
            repeats: timed calls; the median is kept.
            calibrate: random whole networks timed end to end to scale the entries by (0: the raw sum).
        """
        device = torch.device(device)
        table = cost_table(space)  # unit boundaries and shapes come from the cost model
        shapes = _unit_input_shapes(space, table, batch_size)
        original = next(space.parameters()).device
        was_training, previous = space.training, space.active_arch
        space.eval()
        units = []
        try:
            for (name, unit, keys), shape in zip(table.units, shapes):
                entry = {"name": name, "keys": keys, "ms": {}}
                x = torch.randn(shape, device=device)
                for combo in itertools.product(*(table.decisions[k] for k in keys)):
                    space.activate({**_base(space), **dict(zip(keys, combo))}, validate=False)
                    frozen = freeze_module(unit).to(device).eval()
                    entry["ms"][json.dumps(list(combo))] = measure_ms(lambda: frozen(x), device, warmup, repeats)
                units.append(entry)
            fixed = _fixed_ms(space, table, units, batch_size, device, warmup, repeats)
            raw = cls({}, fixed, units)
            calibration = _calibration(space, raw, batch_size, device, warmup, repeats, calibrate)
        finally:
            space.to(original).train(was_training)
            if previous is not None:
                space.activate(previous, validate=False)
        meta = {"format": LATENCY_FORMAT, "space": space.space_name, "fingerprint": space.fingerprint(),
                "input_size": space.input_size, "batch_size": batch_size, "device": device.type,
                "device_name": _device_name(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
                "calibration": calibration}
        return raw.scaled(calibration["scale"], meta)

    def scaled(self, factor: float, meta: dict[str, Any] | None = None) -> LatencyTable:
        """A copy with every entry (units and fixed parts) multiplied by ``factor``."""
        units = [{**u, "ms": {k: v * factor for k, v in u["ms"].items()}} for u in self.units]
        return LatencyTable(dict(self.meta if meta is None else meta), self.fixed_ms * factor, units)

    # --- prediction -----------------------------------------------------------------------
    def predict(self, arch: Mapping[str, Any]) -> float:
        """Predicted latency of ``arch`` in milliseconds."""
        return self.fixed_ms + sum(u["ms"][json.dumps([arch[k] for k in u["keys"]])] for u in self.units)

    def range(self) -> tuple[float, float]:
        """The fastest and slowest predicted latency over the space."""
        lo = self.fixed_ms + sum(min(u["ms"].values()) for u in self.units)
        hi = self.fixed_ms + sum(max(u["ms"].values()) for u in self.units)
        return lo, hi

    def candidate_ms(self, decision: str) -> dict[Any, float] | None:
        """Latency of each value of a decision that is a unit's only key (``None`` otherwise)."""
        for u in self.units:
            if u["keys"] == [decision]:
                return {json.loads(k)[0]: v for k, v in u["ms"].items()}
        return None

    def check(self, space: Any, batch_size: int | None = None, device: str | None = None) -> None:
        """Refuse a table built for another space, input size, batch size or device.

        Raises:
            ValueError: naming what differs and how to rebuild the table.
        """
        want = {"space": space.space_name, "fingerprint": space.fingerprint(), "input_size": space.input_size}
        if batch_size is not None:
            want["batch_size"] = batch_size
        if device is not None:
            want["device"] = torch.device(device).type
        for key, value in want.items():
            if self.meta.get(key) != value:
                raise ValueError(
                    f"latency table was measured for {key}={self.meta.get(key)!r}, but this search has "
                    f"{key}={value!r}; build a table for this space with "
                    f"`python -m lightning_nas.cost.latency --config <recipe> --out table.json`."
                )

    # --- files ----------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"meta": self.meta, "fixed_ms": self.fixed_ms, "units": self.units}, indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path) -> LatencyTable:
        try:
            doc = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"latency table {str(path)!r} does not exist; build one first") from None
        if not isinstance(doc, dict) or "units" not in doc or "meta" not in doc:
            raise ValueError(f"{str(path)!r} is not a latency table written by LatencyTable.save")
        return cls(doc["meta"], float(doc["fixed_ms"]), doc["units"])


def _base(space: Any) -> dict[str, Any]:
    base = space.__dict__.get("_latency_base")
    if base is None:
        base = space.sample(torch.Generator().manual_seed(0))
        space.__dict__["_latency_base"] = base
    return base


def _unit_input_shapes(space: Any, table: Any, batch_size: int) -> list[torch.Size]:
    shapes: dict[int, torch.Size] = {}
    hooks = [u.register_forward_pre_hook(lambda m, a: shapes.__setitem__(id(m), a[0].shape)) for _, u, _ in table.units]
    try:
        space.activate(_base(space), validate=False)
        x = torch.zeros(batch_size, space.in_channels, space.input_size, space.input_size,
                        device=next(space.parameters()).device)
        with torch.no_grad():
            space.eval()(x)
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


def _calibration(space: Any, raw: LatencyTable, batch_size: int, device: torch.device, warmup: int, repeats: int,
                 n: int) -> dict[str, Any]:
    """Scale factor = median over ``n`` seeded random archs of end-to-end latency / summed table entries."""
    if n <= 0:
        return {"scale": 1.0, "archs": 0}
    gen = torch.Generator().manual_seed(2**31 - 1)  # not the seeds searches and benchmarks sample archs with
    x = torch.randn(batch_size, space.in_channels, space.input_size, space.input_size, device=device)
    ratios = []
    for _ in range(n):
        arch = space.sample(gen)
        net = space.export(arch).to(device).eval()
        ratios.append(measure_ms(lambda: net(x), device, warmup, repeats) / raw.predict(arch))
    return {"scale": statistics.median(ratios), "archs": n, "ratios": ratios}


def _fixed_ms(space: Any, table: Any, units: list[dict[str, Any]], batch_size: int, device: torch.device,
              warmup: int, repeats: int) -> float:
    """Latency outside the units: the stem, head and fixed blocks timed directly, each as its exported module.

    A space with its own forward falls back to the whole exported network minus its units (median of 3 archs).
    """
    x = torch.randn(batch_size, space.in_channels, space.input_size, space.input_size, device=device)
    parts = _fixed_parts(space, table)
    if parts is not None:
        shapes: dict[int, torch.Size] = {}
        hooks = [p.register_forward_pre_hook(lambda m, a: shapes.__setitem__(id(m), a[0].shape)) for p in parts]
        try:
            space.activate(_base(space), validate=False)
            with torch.no_grad():
                space.to(device).eval()(x)
        finally:
            for h in hooks:
                h.remove()
        total = 0.0
        for part in parts:
            frozen = freeze_module(part).to(device).eval()
            inp = torch.randn(shapes[id(part)], device=device)
            total += measure_ms(lambda: frozen(inp), device, warmup, repeats)
        return total
    gen = torch.Generator().manual_seed(1)
    rests = []
    for _ in range(3):
        arch = space.sample(gen)
        net = space.export(arch).to(device).eval()
        whole = measure_ms(lambda: net(x), device, warmup, repeats)
        rests.append(whole - sum(u["ms"][json.dumps([arch[k] for k in u["keys"]])] for u in units))
    return max(0.0, statistics.median(rests))


def main(argv: list[str] | None = None) -> None:
    """Build a latency table for the model space of a recipe: ``python -m lightning_nas.cost.latency``."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--config", required=True, help="a recipe YAML whose model has a `space`")
    parser.add_argument("--out", required=True, help="where to write the table JSON")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--calibrate", type=int, default=5, help="whole networks timed to scale the entries by")
    args = parser.parse_args(argv)
    from lightning_nas.cli import space_from_config

    space = space_from_config(args.config)
    table = LatencyTable.build(space, args.batch_size, args.device, repeats=args.repeats, calibrate=args.calibrate)
    print(f"wrote {table.save(args.out)}: {len(table.units)} units, range {table.range()} ms")


if __name__ == "__main__":
    main()
