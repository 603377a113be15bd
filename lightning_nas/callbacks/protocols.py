"""What the callbacks need from a module, checked in ``setup()`` with a clear message."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from lightning.pytorch import LightningModule
from lightning.pytorch.utilities.exceptions import MisconfigurationException


@runtime_checkable
class SearchableModule(Protocol):
    """A module that trains a supernet: ``space`` is a :class:`~lightning_nas.spaces.SearchSpace`."""

    space: Any


def require_space(pl_module: LightningModule, callback: str) -> Any:
    """The module's search space, or an error naming the callback, the module and the fix.

    Raises:
        MisconfigurationException: the module has no ``space`` that is a ``SearchSpace``.
    """
    from lightning_nas.spaces.base import SearchSpace

    space = getattr(pl_module, "space", None)
    if not isinstance(space, SearchSpace):
        raise MisconfigurationException(
            f"{callback} needs a module with a `space` attribute that is a lightning_nas SearchSpace; "
            f"{type(pl_module).__name__} has {type(space).__name__ if space is not None else 'none'}. "
            "Use it with a method module such as SPOSModule(space=...)."
        )
    return space
