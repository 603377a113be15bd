"""Who picks the training path: the one seam between a method module and ``PathSampling``.

``PathSampling`` (``lightning_nas/callbacks/path_sampling.py``) owns the active path: before every training
batch it draws one arch with a generator seeded by ``(seed, step)`` and activates it on the module's
``space``. A module whose method draws that path from something it learns (ProxylessNAS: ``softmax(α)``
after its warm-up) does not activate anything itself; it implements one method::

    def sample_path(self, generator: torch.Generator) -> Arch | None:
        '''This batch's path, drawn with ``generator`` only (so every DDP rank and a resumed run draw the
        same), or ``None`` to let PathSampling draw its own (uniform or cost-constrained) path.'''

``PathSampling`` finds it with :func:`path_sampler` (checked in its ``setup()``) and draws through
:func:`draw_path`. The check is ``callable(getattr(...))``, not ``isinstance`` against a ``Protocol``:
from Python 3.12 a runtime protocol looks members up statically and misses what ``nn.Module`` serves
through ``__getattr__``. A module that needs ``PathSampling`` to train adds one in ``configure_callbacks``
when the trainer has none (``ProxylessModule`` does); it never picks paths in its own hooks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from lightning_nas.arch import Arch

__all__ = ["SAMPLE_PATH", "draw_path", "path_sampler"]

SAMPLE_PATH = "sample_path"
"""The name of the method a module implements to pick its own training paths."""

PathSampler = Callable[[torch.Generator], Arch | None]
"""What ``sample_path`` is: a generator in, an arch (or ``None``) out."""


def path_sampler(module: Any) -> PathSampler | None:
    """The module's ``sample_path`` method, or ``None`` when it leaves the path to ``PathSampling``.

    Raises:
        TypeError: the module has a ``sample_path`` that is not callable.
    """
    method = getattr(module, SAMPLE_PATH, None)
    if method is None:
        return None
    if not callable(method):
        raise TypeError(f"{type(module).__name__}.{SAMPLE_PATH} is a {type(method).__name__}, not a method; a module "
                        f"that picks its own paths implements {SAMPLE_PATH}(generator) -> arch | None")
    return method


def draw_path(module: Any, generator: torch.Generator) -> Arch | None:
    """The module's own path for this batch (drawn with ``generator``), or ``None`` when it has none.

    Raises:
        TypeError: ``sample_path`` is not callable, or returned something other than an arch mapping or ``None``.
    """
    method = path_sampler(module)
    if method is None:
        return None
    arch = method(generator)
    if arch is not None and not isinstance(arch, Mapping):
        raise TypeError(f"{type(module).__name__}.{SAMPLE_PATH} returned a {type(arch).__name__}; it must return an "
                        "arch ({decision: value}) or None")
    return arch
