"""Architectures as data: one value per decision, saved as JSON.

An *arch* is a plain ``dict[str, value]`` keyed by decision name. Values are the
decision's values (``"shuffle5x5"``, ``0.8``, ``4``), never indices, so a saved file
reads like a description of the network::

    {"space": "ShuffleNetSpace", "format": 1, "arch": {"stage1.0.op": "shuffle3x3", ...}}
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

Arch = dict[str, Any]
ARCH_FORMAT = 1

__all__ = ["ARCH_FORMAT", "Arch", "ArchError", "check_arch", "load_arch", "save_arch", "values_equal"]


class ArchError(ValueError):
    """An arch does not fit its search space: a missing, unknown or invalid decision."""


def values_equal(a: Any, b: Any) -> bool:
    """Compare decision values the way JSON round trips them (tuples as lists, floats loosely)."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(values_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def canonical_value(value: Any, allowed: Sequence[Any]) -> Any:
    """Return the allowed value equal to ``value`` (so ``0.6000000001`` maps to ``0.6``), else raise KeyError."""
    for candidate in allowed:
        if values_equal(value, candidate):
            return candidate
    raise KeyError(value)


def check_arch(arch: Mapping[str, Any], decisions: Mapping[str, Sequence[Any]], space: str = "space") -> Arch:
    """Check ``arch`` against ``decisions`` and return it with canonical values.

    Raises:
        ArchError: naming the missing, unknown or invalid key, its value and the allowed values.
    """
    if not isinstance(arch, Mapping):
        raise ArchError(f"An arch must be a mapping of decision name to value, got {type(arch).__name__}.")
    unknown = [k for k in arch if k not in decisions]
    if unknown:
        known = ", ".join(list(decisions)[:6])
        raise ArchError(
            f"Unknown decision {unknown[0]!r} for {space} (value {arch[unknown[0]]!r}); "
            f"its decisions are {known}, ... ({len(decisions)} in all). Was the arch saved from another space?"
        )
    out: Arch = {}
    for key, allowed in decisions.items():
        if key not in arch:
            raise ArchError(f"Missing decision {key!r} for {space}: give one of {list(allowed)}.")
        try:
            out[key] = canonical_value(arch[key], allowed)
        except KeyError:
            raise ArchError(
                f"Invalid value {arch[key]!r} for decision {key!r} of {space}: allowed values are {list(allowed)}."
            ) from None
    return out


def save_arch(arch: Mapping[str, Any], path: str | Path, space: Any = None, **meta: Any) -> Path:
    """Write ``arch`` as JSON ``{"space": <name>, "format": 1, "arch": {...}}``.

    Args:
        arch: the arch to save.
        path: the file to write (parent folders are created).
        space: the search space (or its name) the arch belongs to.
        **meta: extra JSON-serialisable fields stored beside the arch (costs, accuracy, ...).
    """
    name = space if isinstance(space, str) or space is None else getattr(space, "space_name", type(space).__name__)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"space": name, "format": ARCH_FORMAT, "arch": dict(arch), **meta}
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def load_arch(path: str | Path, space: Any = None) -> Arch:
    """Read an arch JSON file written by :func:`save_arch`.

    Args:
        path: the JSON file.
        space: if given, the arch must belong to this space and is validated against it.

    Raises:
        ArchError: the file is not an arch file, belongs to another space, or has a bad decision.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise ArchError(f"Arch file {str(path)!r} does not exist.") from None
    except json.JSONDecodeError as err:
        raise ArchError(f"Arch file {str(path)!r} is not valid JSON: {err}.") from None
    if not isinstance(doc, dict) or "arch" not in doc:
        raise ArchError(f"Arch file {str(path)!r} lacks the 'arch' field; write it with lightning_nas.save_arch.")
    if doc.get("format", ARCH_FORMAT) > ARCH_FORMAT:
        raise ArchError(f"Arch file {str(path)!r} has format {doc['format']}; this version reads {ARCH_FORMAT}.")
    arch = dict(doc["arch"])
    if space is not None:
        expected = getattr(space, "space_name", type(space).__name__)
        if doc.get("space") not in (None, expected):
            raise ArchError(f"Arch file {str(path)!r} is for space {doc['space']!r}, not {expected!r}.")
        arch = space.validate(arch)
    return arch
