"""Shared pieces of every benchmark: the JSON envelope, interleaved A/B timing, saved-activation memory.

Method (the same in every benchmark, written once here):

- **Threads**: one setting for the whole suite, ``torch.set_num_threads(threads)`` (``--threads``,
  default 1) before anything runs, recorded in ``settings``. One thread keeps two benchmarks on a
  shared 2-core machine from fighting over cores and makes ratios stable.
- **Interleaved rounds**: ``interleaved({"A": fa, "B": fb}, rounds, reps)`` runs, in each round, ``reps``
  calls of every function back to back, the order alternating between rounds (A B, B A, ...), and keeps
  the mean time per call of each function per round. A ratio is taken *per round* (same load, same
  minute), then summarised as the median with its min–max and interquartile range over the rounds.
  Absolute times are kept only as context: on a shared machine they drift, ratios barely do.
- **Peak training memory on CPU**: the bytes of the tensors autograd saves for backward during the
  forward (``torch.autograd.graph.saved_tensors_hooks``), each storage counted once, parameters (and
  views of them) not counted: the activation memory a training step holds at its peak, which is what a
  one-path vs all-paths method changes. (It leaves out the transient peak inside one op and the
  gradients, which are the same for the methods compared; on CUDA ``torch.cuda.max_memory_allocated``
  would measure all of it, but this suite has so far run on CPU only.)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

__all__ = ["Bench", "interleaved", "machine", "saved_activation_bytes", "spread", "timed"]


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "python": platform.python_version()}


def spread(values: Iterable[float]) -> dict[str, float]:
    """Median, min, max and interquartile range of ``values``."""
    v = sorted(float(x) for x in values)
    if not v:
        return {"median": float("nan"), "min": float("nan"), "max": float("nan"), "q1": float("nan"),
                "q3": float("nan"), "n": 0}
    q = statistics.quantiles(v, n=4, method="inclusive") if len(v) > 1 else [v[0], v[0], v[0]]
    return {"median": statistics.median(v), "min": v[0], "max": v[-1], "q1": q[0], "q3": q[2], "n": len(v)}


def timed(fn: Callable[[], Any], reps: int) -> float:
    """Mean seconds per call of ``fn`` over ``reps`` calls."""
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / reps


def interleaved(fns: Mapping[str, Callable[[], Any]], rounds: int, reps: int, warmup: int = 2
                ) -> dict[str, list[float]]:
    """Per-round mean seconds per call of each function, the functions alternating their order each round.

    Args:
        fns: ``{label: function}``; two or more.
        rounds: measurement rounds.
        reps: calls per function per round (their mean is the round's time).
        warmup: untimed calls of each function first.

    Returns:
        ``{label: [seconds per call in round r]}``; divide two lists element-wise for per-round ratios.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    labels = list(fns)
    for r in range(rounds):
        for label in labels if r % 2 == 0 else labels[::-1]:
            times[label].append(timed(fns[label], reps))
    return times


def ratios(num: list[float], den: list[float]) -> list[float]:
    """Per-round ratios ``num[r] / den[r]``."""
    return [a / b for a, b in zip(num, den, strict=True)]


def saved_activation_bytes(fn: Callable[[], Any], exclude: Iterable[torch.Tensor] = ()) -> int:
    """Bytes of the tensors autograd saves for backward while ``fn()`` runs (each storage once).

    Storages of ``exclude`` (pass the model's parameters) are not counted: weights are held anyway,
    whatever the method. The result of ``fn`` is dropped after the count, so nothing stays alive.
    """
    skip = {p.untyped_storage().data_ptr() for p in exclude}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in skip and ptr != 0:
            seen[ptr] = max(seen.get(ptr, 0), storage.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(seen.values())


class Bench:
    """One benchmark's command line and JSON envelope.

    Example::

        bench = Bench("supernet_overhead", "…what it measures…")
        args = bench.parse()            # --quick, --threads, --seed
        bench.figure("ratio", 1.04)
        bench.target("ratio", "<=", 1.10)
        bench.emit()                    # one JSON object on the last stdout line
    """

    def __init__(self, name: str, description: str) -> None:
        self.name, self.description = name, description
        self.settings: dict[str, Any] = {}
        self.figures: dict[str, Any] = {}
        self.targets: dict[str, str] = {}
        self.notes: list[str] = []
        self.started = time.perf_counter()

    def parse(self, argv: list[str] | None = None, extra: Callable[[argparse.ArgumentParser], None] | None = None
              ) -> argparse.Namespace:
        parser = argparse.ArgumentParser(prog=f"python -m benchmarks.{self.name}", description=self.description)
        parser.add_argument("--quick", action="store_true", help="smaller settings: the whole suite in < 5 min")
        parser.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", "1")))
        parser.add_argument("--seed", type=int, default=0)
        if extra is not None:
            extra(parser)
        args = parser.parse_args(argv)
        torch.set_num_threads(args.threads)
        torch.manual_seed(args.seed)
        self.settings.update({"quick": args.quick, "threads": args.threads, "seed": args.seed})
        return args

    def figure(self, key: str, value: Any) -> Any:
        self.figures[key] = _round(value)
        return value

    def target(self, key: str, op: str, bound: float) -> None:
        """A target on a figure, written ``"<figure> <op> <bound>"`` (evaluated by :func:`check_target`)."""
        self.targets[key] = f"{key} {op} {bound:g}"

    def note(self, text: str) -> None:
        self.notes.append(text)

    def document(self) -> dict[str, Any]:
        self.settings["wall_s"] = round(time.perf_counter() - self.started, 1)
        return {"name": self.name, "description": self.description, "machine": machine(),
                "torch": torch.__version__, "device": self.settings.get("device", "cpu"),
                "settings": self.settings, "figures": self.figures, "targets": self.targets, "notes": self.notes}

    def emit(self) -> None:
        sys.stdout.flush()
        print(json.dumps(self.document(), default=str), flush=True)


_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": lambda a, b: a <= b, "<": lambda a, b: a < b, ">=": lambda a, b: a >= b, ">": lambda a, b: a > b,
}


def check_target(expression: str, figures: Mapping[str, Any]) -> bool | None:
    """Whether ``"<figure> <op> <bound>"`` holds for ``figures`` (``None``: the figure is missing)."""
    key, op, bound = expression.split()
    value = figures.get(key)
    if not isinstance(value, (int, float)) or op not in _OPS:
        return None
    return _OPS[op](float(value), float(bound))


def _round(value: Any) -> Any:
    if isinstance(value, float):
        return float(f"{value:.4g}")
    if isinstance(value, dict):
        return {k: _round(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_round(v) for v in value]
    return value
