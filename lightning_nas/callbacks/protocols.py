"""What the callbacks need from a module, checked in ``setup()`` with a clear message."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from lightning.pytorch import LightningModule
from lightning.pytorch.utilities.exceptions import MisconfigurationException


class SearchableModule(Protocol):
    """A module that trains a supernet: ``space`` is a :class:`~lightning_nas.spaces.SearchSpace`."""

    space: Any


def missing_members(obj: Any, names: Iterable[str]) -> list[str]:
    """The names in ``names`` that ``obj`` lacks, looked up as attribute access does.

    ``isinstance(module, SomeRuntimeProtocol)`` cannot be used on an ``nn.Module``: from Python 3.12 it looks
    members up with ``inspect.getattr_static``, which does not see submodules, parameters and buffers (they are
    reached through ``nn.Module.__getattr__``). ``hasattr`` does, on every supported Python.
    """
    return [name for name in names if not hasattr(obj, name)]


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
