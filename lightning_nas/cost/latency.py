"""``LatencyTable``: latency of every candidate measured on a real device, summed per arch.

Blocks timed one at a time run with their weights and input hot in cache; inside a whole network they do
not, so a plain sum under-predicts end-to-end latency by a roughly constant fraction (about 11 % for a
MobileNet at batch 1 on a 2-core CPU). ``build(calibrate=n)`` therefore times ``n`` random whole exported
networks right after the blocks and scales every entry by the median ratio measured / summed (kept in
``meta["calibration"]``). One factor for all entries keeps every comparison between candidates as measured
and makes the absolute milliseconds (a latency target, a constraint) match the device.

Every timing is taken in interleaved rounds (:mod:`lightning_nas.cost.timing`): an entry is the median of
its round medians, and the table keeps its own noise in ``meta["noise"]`` (the per-entry spread over the
rounds). An entry whose spread is over ``max_spread`` is timed again; a calibration factor outside
``scale_range`` (a sign that the machine was busy while the blocks or the networks were timed) makes the
whole table be measured again; both warn when they persist. A table names the space (fingerprint), input
size, batch size and device it was measured for; :meth:`LatencyTable.check` refuses it anywhere else with
one line that says what differs and the command that builds the right table.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import shlex
import statistics
import sys
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lightning_nas.cost.tables import cost_table
from lightning_nas.cost.timing import Progress, RoundTimer, measure_ms, spread
from lightning_nas.errors import MissingFileError, PrerequisiteError
from lightning_nas.nn.choice import freeze_module

__all__ = ["LatencyTable", "build_command", "measure_ms"]

LATENCY_FORMAT = 1
CHECKED = ("space", "fingerprint", "input_size", "batch_size", "device")


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
        self.path: Path | None = None  # the file it was loaded from or saved to (named in errors)

    # --- building -------------------------------------------------------------------------
    @classmethod
    def build(cls, space: Any, batch_size: int = 1, device: str | torch.device = "cpu", warmup: int = 5,
              repeats: int = 20, calibrate: int = 5, rounds: int = 3, max_spread: float = 0.5,
              scale_range: tuple[float, float] = (0.33, 3.0), retries: int = 1, progress: bool = True) -> LatencyTable:
        """Measure every unit candidate and the fixed parts of ``space`` on ``device``.

        The space is left as it was: on its device, every module in its train/eval mode, its active arch.

        Args:
            space: the search space (moved to ``device`` for the measurement, then back).
            batch_size: the batch the latency is measured for.
            device: the target device (``"cpu"``, ``"cuda"``).
            warmup: untimed calls before timing each candidate.
            repeats: timed calls per candidate, over all rounds.
            calibrate: random whole networks timed end to end to scale the entries by (0: the raw sum).
            rounds: interleaved rounds; an entry is the median of its round medians.
            max_spread: an entry whose ``(max − min) / median`` over the rounds exceeds this is timed again.
            scale_range: a calibration factor outside it re-measures the whole table.
            retries: how often an entry, or the table, is measured again before warning.
            progress: show ``done/total timings`` on stderr (rank 0).
        """
        device = torch.device(device)
        table = cost_table(space)  # unit boundaries and shapes come from the cost model
        original, previous = next(space.parameters()).device, space.active_arch
        modes = {m: m.training for m in space.modules()}  # restored per module: a table build never changes them
        try:
            space.eval()
            shapes = _unit_input_shapes(space, table, batch_size)
            for attempt in range(retries + 1):
                built = _measure(cls, space, table, shapes, batch_size, device, (warmup, repeats, rounds, calibrate),
                                 max_spread, retries, progress)
                scale = built.meta["calibration"]["scale"]
                if scale_range[0] <= scale <= scale_range[1]:
                    break
                warnings.warn(f"latency table calibration factor {scale:.3g} is outside {scale_range} (the machine was "
                              f"probably busy); {'measuring again' if attempt < retries else 'keeping it'}",
                              stacklevel=2)
        finally:
            space.to(original)
            for module, training in modes.items():
                module.training = training
            if previous is not None:
                space.activate(previous, validate=False)
        built.meta["noise"]["attempts"] = attempt + 1
        return built

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

    def check(self, space: Any, batch_size: int | None = None, device: str | torch.device | None = None,
              path: str | Path | None = None) -> None:
        """Refuse a table built for another space (settings, input size), batch size or device.

        Args:
            space: the space the table is about to price.
            batch_size: the batch the caller needs (``None``: any).
            device: the device type the caller needs (``None``: any).
            path: the table's file, for the message (default: where it was loaded from).

        Raises:
            PrerequisiteError: one line naming the file, what differs and the command that builds the right table.
        """
        want: dict[str, Any] = {"space": space.space_name, "fingerprint": space.fingerprint(),
                                "input_size": space.input_size}
        if batch_size is not None:
            want["batch_size"] = int(batch_size)
        if device is not None:
            want["device"] = torch.device(device).type
        diff = [f"{k} {self.meta.get(k)!r} (this run: {v!r})" for k, v in want.items() if self.meta.get(k) != v]
        if not diff:
            return
        name = str(path or self.path or "<latency table>")
        batch = want.get("batch_size", self.meta.get("batch_size", 1))
        dev = want.get("device", self.meta.get("device", "cpu"))
        raise PrerequisiteError(f"latency table {name} was measured for another setting: {', '.join(diff)}; "
                                f"build the right one with: {build_command(name, batch, dev)}")

    # --- files ----------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"meta": self.meta, "fixed_ms": self.fixed_ms, "units": self.units}, indent=1))
        self.path = path
        return path

    @classmethod
    def load(cls, path: str | Path, batch_size: int = 1, device: str = "cpu") -> LatencyTable:
        """Read a table written by :meth:`save`.

        Args:
            path: the JSON file.
            batch_size: named in the command of the error when the file is missing.
            device: named in the command of the error when the file is missing.

        Raises:
            MissingFileError: no such file (naming the command that builds it).
            PrerequisiteError: the file is not a latency table.
        """
        try:
            doc = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise MissingFileError(f"latency table {path} does not exist; build it with: "
                                   f"{build_command(path, batch_size, device)}") from None
        except (UnicodeDecodeError, json.JSONDecodeError):
            doc = None
        if not isinstance(doc, dict) or "units" not in doc or "meta" not in doc:
            raise PrerequisiteError(f"{path} is not a latency table written by LatencyTable.save; build one with: "
                                    f"{build_command(path, batch_size, device)}")
        table = cls(doc["meta"], float(doc["fixed_ms"]), doc["units"])
        table.path = Path(path)
        return table


def build_command(out: str | Path, batch_size: int = 1, device: str = "cpu", argv: list[str] | None = None) -> str:
    """The shell command that measures the latency table ``out`` for the recipe this process runs.

    The recipe and its space overrides are read from ``argv`` (default: this process's command line,
    ``lightning-nas fit --config R ...``); without a ``--config`` there, the recipe is a placeholder.
    """
    args = _recipe_args(sys.argv[1:] if argv is None else argv) or ["--config", "<recipe.yaml>"]
    words = ["python", "-m", "lightning_nas.cost.latency", *args, "--batch-size", str(batch_size),
             "--device", torch.device(device).type, "--out", str(out)]
    return " ".join(w if w == "<recipe.yaml>" else shlex.quote(w) for w in words)


def _recipe_args(argv: list[str]) -> list[str]:
    """The ``--config`` and the overrides of the model's space and the data class among ``argv``."""
    out: list[str] = []
    keep = ("--config", "-c", "--model.init_args.space", "--model.space", "--data.class_path", "--data")
    for i, word in enumerate(argv):
        key = word.split("=", 1)[0]
        if key not in keep and not key.startswith(("--model.init_args.space.", "--model.space.")):
            continue
        key = "--config" if key == "-c" else key
        if "=" in word:
            out.append(f"{key}={word.split('=', 1)[1]}")
        elif i + 1 < len(argv):
            out += [key, argv[i + 1]]
    return out


def _measure(cls: type[LatencyTable], space: Any, table: Any, shapes: list[torch.Size], batch_size: int,
             device: torch.device, timing: tuple[int, int, int, int], max_spread: float, retries: int,
             progress: bool) -> LatencyTable:
    """One measurement of the whole table: every candidate, the fixed parts and the calibration networks,
    timed together in interleaved rounds."""
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
    meta = {"format": LATENCY_FORMAT, "space": space.space_name, "fingerprint": space.fingerprint(),
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


def _unit_input_shapes(space: Any, table: Any, batch_size: int) -> list[torch.Size]:
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


def space_of_recipe(config: str | Path, overrides: list[str] | None = None) -> Any:
    """The search space of a recipe's model (with ``overrides``), without loading or measuring its latency table."""
    import inspect

    import yaml

    from lightning_nas.cli import cli_main

    doc = yaml.safe_load(Path(config).read_text()) or {}
    model = doc.get("model") or {}
    params: Any = {}
    if isinstance(model, dict) and model.get("class_path"):
        module, _, name = model["class_path"].rpartition(".")
        params = inspect.signature(getattr(__import__(module, fromlist=[name]), name)).parameters
    costs = ("latency_table", "latency_metric", "target_latency", "target_fraction")
    nulls = [f"--model.init_args.{k}=null" for k in costs if k in params]  # the table is what is being built
    cli = cli_main(["--config", str(config), *(overrides or []), *nulls], run=False)
    space = getattr(cli.model, "space", None)
    if space is None:
        raise PrerequisiteError(f"the model of {config} has no `space`: only a search space has a latency table")
    return space


def main(argv: list[str] | None = None) -> None:
    """Build a latency table for the model space of a recipe: ``python -m lightning_nas.cost.latency``.

    Arguments it does not know (``--model.init_args.space.init_args.width_mult=0.5``) override the recipe.
    """
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--config", required=True, help="a recipe YAML whose model has a `space`")
    parser.add_argument("--out", required=True, help="where to write the table JSON")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--calibrate", type=int, default=5, help="whole networks timed to scale the entries by")
    args, overrides = parser.parse_known_args(argv)
    space = space_of_recipe(args.config, overrides)
    table = LatencyTable.build(space, args.batch_size, args.device, repeats=args.repeats, calibrate=args.calibrate)
    lo, hi = table.range()
    print(f"wrote {table.save(args.out)}: {len(table.units)} units, {lo:.3g} to {hi:.3g} ms per batch of "
          f"{args.batch_size} on {table.meta['device_name']}, noisiest entry {table.meta['noise']['max_spread']:.0%}")


if __name__ == "__main__":
    main()
