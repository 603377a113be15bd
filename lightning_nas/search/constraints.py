"""Cost constraints of a search: ``macs ≤ 330M``, ``latency_ms ≤ 20``, ``bitops ≥ ...``.

Costs come from :mod:`lightning_nas.cost` (table lookups, no forward pass), imported lazily so this
module imports on its own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from lightning_nas.arch import Arch
from lightning_nas.errors import ConfigError

__all__ = ["METRICS", "Constraint", "check_feasible", "cost_bounds", "cost_function", "format_amount"]

METRICS = ("macs", "params", "latency_ms", "bitops")


def format_amount(value: float) -> str:
    """``330000000 → "330M"``, ``2.5e9 → "2.5G"``, ``20.0 → "20"`` (for constraint names)."""
    for factor, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= factor:
            return f"{value / factor:g}{suffix}"
    return f"{value:g}"


@dataclass(frozen=True)
class Constraint:
    """Bounds on one cost metric.

    Args:
        metric: ``macs``, ``params``, ``latency_ms`` or ``bitops``.
        max: the largest allowed cost (inclusive), or ``None``.
        min: the smallest allowed cost (inclusive), or ``None``.
        name: a file-name-safe label; default from the bounds, e.g. ``macs_le_330M``.

    Example::

        Constraint("macs", max=330e6).name  # "macs_le_330M"
    """

    metric: str
    max: float | None = None
    min: float | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"Unknown constraint metric {self.metric!r}: use one of {', '.join(METRICS)}.")
        if self.max is None and self.min is None:
            raise ValueError(f"Constraint on {self.metric!r} needs a max or a min.")
        if self.max is not None and self.min is not None and self.min > self.max:
            raise ValueError(f"Constraint on {self.metric!r} has min {self.min} > max {self.max}.")
        if self.name is None:
            object.__setattr__(self, "name", self._default_name())

    def _default_name(self) -> str:
        if self.min is None:
            return f"{self.metric}_le_{format_amount(self.max)}"
        if self.max is None:
            return f"{self.metric}_ge_{format_amount(self.min)}"
        return f"{self.metric}_{format_amount(self.min)}_to_{format_amount(self.max)}"

    @classmethod
    def parse(cls, spec: Constraint | Mapping[str, Any]) -> Constraint:
        """A constraint from itself or a dict such as ``{"metric": "macs", "max": 330000000}``."""
        if isinstance(spec, Constraint):
            return spec
        unknown = set(spec) - {"metric", "max", "min", "name"}
        if unknown or "metric" not in spec:
            raise ValueError(f"A constraint is a dict with 'metric' and 'max' and/or 'min' (and 'name'), got {spec!r}.")
        return cls(**spec)

    def satisfied(self, costs: Mapping[str, float]) -> bool:
        """Whether ``costs[self.metric]`` is within the bounds."""
        value = costs[self.metric]
        return (self.max is None or value <= self.max) and (self.min is None or value >= self.min)

    def describe(self) -> str:
        lo = "" if self.min is None else f"{format_amount(self.min)} ≤ "
        hi = "" if self.max is None else f" ≤ {format_amount(self.max)}"
        return f"{lo}{self.metric}{hi}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cost_function(space: Any, metric: str, latency_table: Any = None) -> Callable[[Arch], float]:
    """``arch -> cost`` for one metric of ``space``.

    Raises:
        ValueError: ``latency_ms`` without a latency table, or an unknown metric.
    """
    if metric == "latency_ms":
        if latency_table is None:
            raise ValueError("A latency_ms constraint needs a latency table: EvolutionSearch(latency_table=PATH).")
        return lambda arch: float(latency_table.predict(arch))
    if metric not in METRICS:
        raise ValueError(f"Unknown cost metric {metric!r}: use one of {', '.join(METRICS)}.")
    from lightning_nas import cost

    fn = getattr(cost, metric)
    return lambda arch: float(fn(space, arch))


def cost_bounds(space: Any, metric: str, latency_table: Any = None) -> tuple[float, float]:
    """The smallest and largest ``metric`` of any arch of ``space``."""
    if metric == "latency_ms" and latency_table is None:
        raise ValueError("A latency_ms constraint needs a latency table: EvolutionSearch(latency_table=PATH).")
    from lightning_nas.cost import cost_range

    lo, hi = cost_range(space, metric, latency_table=latency_table)
    return float(lo), float(hi)


def check_feasible(space: Any, constraints: Sequence[Constraint], latency_table: Any = None) -> None:
    """Fail before any scoring if some constraint excludes every arch of ``space``.

    Raises:
        ConfigError: naming the constraint and the space's smallest and largest cost (a ``ValueError``).
    """
    for c in constraints:
        lo, hi = cost_bounds(space, c.metric, latency_table)
        if (c.max is not None and c.max < lo) or (c.min is not None and c.min > hi):
            raise ConfigError(
                f"No arch of {getattr(space, 'space_name', type(space).__name__)} meets constraint {c.name!r} "
                f"({c.describe()}): its {c.metric} ranges from {format_amount(lo)} ({lo:g}) to "
                f"{format_amount(hi)} ({hi:g}). Loosen the bound or change the space."
            )
