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
import json
import shlex
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from lightning_nas.cost.latency_measure import measure, unit_input_shapes
from lightning_nas.cost.tables import cost_table
from lightning_nas.cost.timing import measure_ms
from lightning_nas.errors import MissingFileError, PrerequisiteError

__all__ = ["LatencyTable", "build_command", "measure_ms"]

LATENCY_FORMAT = 1
CHECKED = ("space", "fingerprint", "input_size", "batch_size", "device")


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
            shapes = unit_input_shapes(space, table, batch_size)
            for attempt in range(retries + 1):
                built = measure(cls, space, table, shapes, batch_size, device, (warmup, repeats, rounds, calibrate),
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
        built.meta = {"format": LATENCY_FORMAT, **built.meta}
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
