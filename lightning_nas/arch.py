"""Architectures as data: one value per decision, saved as JSON.

An *arch* is a plain ``dict[str, value]`` keyed by decision name. Values are the
decision's values (``"shuffle5x5"``, ``0.8``, ``4``), never indices, so a saved file
reads like a description of the network::

    {"space": "ShuffleNetSpace", "space_class": "...", "settings": {"width_mult": 0.25, ...},
     "fingerprint": "...", "format": 2, "arch": {"stage1.0.op": "shuffle3x3", ...}}

The space's class and constructor settings travel with the arch, so it cannot silently land in a space
built with other settings (format-1 files without them still load, with a warning).
"""

from __future__ import annotations

import functools
import inspect
import json
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning_nas.errors import MissingFileError, UserError

Arch = dict[str, Any]
ARCH_FORMAT = 2

__all__ = ["ARCH_FORMAT", "Arch", "ArchError", "ArchMissingError", "RecordsSettings", "check_arch", "load_arch",
           "read_arch_file", "save_arch", "settings_differences", "space_identity", "values_equal"]


class ArchError(UserError, ValueError):
    """An arch does not fit its search space: a missing, unknown or invalid decision."""


class ArchMissingError(ArchError, MissingFileError):
    """An arch file that a search writes does not exist."""


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


def _jsonable(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


class RecordsSettings:
    """Mixin: a space remembers the arguments it was built with (``space.settings``), bound to its signature.

    Recorded by the outermost ``__init__`` (a subclass calling ``super().__init__`` does not overwrite it), with
    defaults filled in and values made JSON-friendly, so an arch file can say exactly which space it fits.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" not in cls.__dict__:
            return
        original = cls.__init__
        signature = inspect.signature(original)

        @functools.wraps(original)
        def __init__(self: Any, *args: Any, **kw: Any) -> None:
            if "_settings" not in self.__dict__:
                bound = signature.bind(self, *args, **kw)
                bound.apply_defaults()
                self.__dict__["_settings"] = {k: _jsonable(v) for k, v in list(bound.arguments.items())[1:]
                                              if signature.parameters[k].kind not in (inspect.Parameter.VAR_POSITIONAL,
                                                                                      inspect.Parameter.VAR_KEYWORD)}
            original(self, *args, **kw)

        cls.__init__ = __init__  # type: ignore[method-assign]

    @property
    def settings(self) -> dict[str, Any]:
        """The constructor arguments this space was built with (defaults included)."""
        return dict(self.__dict__.get("_settings", {}))


# settings that do not change which archs a space holds or the network an arch exports to: an arch moves between
# data sets (num_classes), regularisation (dropout) and supernet weight layouts (DartsCellSpace's op_weights)
TRANSFERABLE_SETTINGS = ("num_classes", "dropout", "op_weights")


def space_identity(space: Any) -> dict[str, Any]:
    """What an arch file records about its space: name, class path, constructor settings and fingerprint."""
    if space is None or isinstance(space, str):
        return {"space": space}
    cls = type(space)
    doc: dict[str, Any] = {"space": getattr(space, "space_name", cls.__name__),
                           "space_class": f"{cls.__module__}.{cls.__qualname__}"}
    settings = getattr(space, "settings", None)
    if isinstance(settings, Mapping):
        doc["settings"] = dict(settings)
    fingerprint = getattr(space, "fingerprint", None)
    if callable(fingerprint):
        doc["fingerprint"] = fingerprint()
    return doc


def save_arch(arch: Mapping[str, Any], path: str | Path, space: Any = None, **meta: Any) -> Path:
    """Write ``arch`` as JSON: the space's name, class, constructor settings and fingerprint, and the arch.

    ``{"space": "ShuffleNetSpace", "space_class": "lightning_nas.spaces.shufflenet.ShuffleNetSpace",
    "settings": {"width_mult": 0.25, ...}, "fingerprint": "1a2b...", "format": 2, "arch": {...}, ...meta}``

    Args:
        arch: the arch to save.
        path: the file to write (parent folders are created).
        space: the search space the arch belongs to (or only its name: then no settings are recorded).
        **meta: extra JSON-serialisable fields stored beside the arch (costs, accuracy, ...).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {**space_identity(space), "format": ARCH_FORMAT, "arch": dict(arch), **meta}
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    return path


def _read_doc(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise ArchMissingError(f"Arch file {str(path)!r} does not exist: it is the best_arch.json a search writes "
                               "(e.g. `lightning-nas fit --config recipes/spos/cifar10.yaml`).") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ArchError(f"Arch file {str(path)!r} is not valid JSON ({err}): give a best_arch.json that a search "
                        "wrote (lightning_nas.save_arch).") from None
    if not isinstance(doc, dict) or "arch" not in doc:
        raise ArchError(f"Arch file {str(path)!r} lacks the 'arch' field: give a best_arch.json that a search wrote "
                        "(lightning_nas.save_arch).")
    if doc.get("format", ARCH_FORMAT) > ARCH_FORMAT:
        raise ArchError(f"Arch file {str(path)!r} has format {doc['format']}; this version reads {ARCH_FORMAT}: "
                        "upgrade lightning_nas.")
    return doc


def settings_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{setting: (saved, current)}`` for every setting (but the transferable ones) whose values differ."""
    keys = [k for k in dict.fromkeys([*saved, *current]) if k not in TRANSFERABLE_SETTINGS]
    return {k: (saved.get(k), current.get(k)) for k in keys
            if not values_equal(_jsonable(saved.get(k)), _jsonable(current.get(k)))}


def _check_space(doc: Mapping[str, Any], path: Path, space: Any, allow_settings_change: bool) -> None:
    expected = getattr(space, "space_name", type(space).__name__)
    if doc.get("space") not in (None, expected):
        raise ArchError(f"Arch file {str(path)!r} is for space {doc['space']!r}, not {expected!r}: set the recipe's "
                        f"space to {doc['space']} with the file's `settings`.")
    current = getattr(space, "settings", None)
    if "settings" not in doc:
        warnings.warn(f"Arch file {str(path)!r} does not record its space's settings (written before format 2); "
                      "it is loaded into this space unchecked.", stacklevel=3)
        return
    if not isinstance(current, Mapping):
        return
    diff = settings_differences(doc["settings"], current)
    if not diff:
        return
    said = ", ".join(f"{k}={a!r} (this space: {b!r})" for k, a, b in ((k, *v) for k, v in diff.items()))
    if allow_settings_change:
        warnings.warn(f"Arch file {str(path)!r} was searched in {expected} with {said}; loaded into this space "
                      "as asked (allow_settings_change).", stacklevel=3)
        return
    raise ArchError(f"Arch file {str(path)!r} was searched in {expected} with {said}: build the space with the file's "
                    "settings (e.g. --model.init_args.space.init_args.<setting>=<value>), or set "
                    "`allow_settings_change: true` to retrain this arch at other settings on purpose.")


def load_arch(path: str | Path, space: Any = None, allow_settings_change: bool = False) -> Arch:
    """Read an arch JSON file written by :func:`save_arch`.

    Args:
        path: the JSON file.
        space: if given, the arch must belong to this space, built with the same settings (all but
            ``num_classes``), and is validated against it.
        allow_settings_change: load an arch into a space with other settings (another width or depth), with a
            warning instead of an error.

    Raises:
        ArchError: the file is missing or not an arch file, belongs to another space or to other settings, or
            has a bad decision.
    """
    path = Path(path)
    doc = _read_doc(path)
    arch = dict(doc["arch"])
    if space is not None:
        _check_space(doc, path, space, allow_settings_change)
        arch = space.validate(arch)
    return arch


def read_arch_file(path: str | Path) -> dict[str, Any]:
    """The whole document of an arch file (space identity, arch and metadata), checked to be an arch file."""
    return _read_doc(Path(path))
