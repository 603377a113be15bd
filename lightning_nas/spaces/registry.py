"""A registry of published architectures, each with the figures its paper or release reports."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lightning_nas.arch import Arch

__all__ = ["PublishedArch", "get_published", "published_names", "register_published"]


@dataclass(frozen=True)
class PublishedArch:
    """One published architecture expressed in one of our spaces.

    Args:
        name: registry key (``"spos_block_search"``).
        space: the space class's name in ``lightning_nas.spaces``.
        space_kwargs: constructor arguments of the space (``input_size=224``, ...).
        arch: the arch in that space.
        macs: published multiply-accumulates (what papers call FLOPs).
        params: published parameter count.
        top1: published ImageNet top-1 accuracy in percent, if any.
        source: where the arch and its figures come from.
    """

    name: str
    space: str
    space_kwargs: dict[str, Any]
    arch: Arch
    macs: float
    params: float | None = None
    top1: float | None = None
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def build_space(self, **overrides: Any) -> Any:
        import lightning_nas.spaces as spaces

        return getattr(spaces, self.space)(**{**self.space_kwargs, **overrides})


_REGISTRY: dict[str, PublishedArch] = {}
_LOADERS: list[Callable[[], None]] = []


def register_published(entry: PublishedArch) -> PublishedArch:
    """Add ``entry``; a duplicate name is an error."""
    if entry.name in _REGISTRY:
        raise ValueError(f"published arch {entry.name!r} is registered twice")
    _REGISTRY[entry.name] = entry
    return entry


def _load_all() -> None:
    import lightning_nas.spaces  # noqa: F401  (spaces register their published archs on import)


def published_names() -> list[str]:
    """The names of every registered published architecture."""
    _load_all()
    return sorted(_REGISTRY)


def get_published(name: str) -> PublishedArch:
    """The published architecture ``name``.

    Raises:
        KeyError: naming the known architectures.
    """
    _load_all()
    if name not in _REGISTRY:
        raise KeyError(f"unknown published arch {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]
