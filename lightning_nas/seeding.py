"""Seeds: the one formula that turns a tuple of integers into a seed, and the generators built from it.

Every reproducible draw in the library (the path of a training batch, an evolution generation, a NAS-RL
child's initialisation, a sample's augmentation) is a function of a few integers only — ``(seed, step)``,
``(seed, run, generation)``, ``(seed, epoch, index)`` — so every DDP rank, data-loader worker and resumed
run draws the same numbers without talking. :func:`mix_seed` is that function; nothing else mixes seeds.
"""

from __future__ import annotations

import torch

__all__ = ["mix_seed", "seeded_generator", "step_generator"]

_MASK = (1 << 63) - 1
_PRIME = 1_000_003


def mix_seed(*parts: int) -> int:
    """One non-negative 63-bit seed from ``parts`` (order matters; ``mix_seed(a, b) != mix_seed(b, a)``).

    A polynomial hash in a large prime: distinct tuples of small integers give distinct seeds, and
    ``mix_seed(s, i)`` for consecutive ``i`` are far apart.
    """
    h = 17
    for part in parts:
        h = (h * _PRIME + int(part) + 31) & _MASK
    return h


def seeded_generator(*parts: int) -> torch.Generator:
    """A CPU generator seeded with :func:`mix_seed` of ``parts``."""
    return torch.Generator().manual_seed(mix_seed(*parts))


def step_generator(seed: int, step: int) -> torch.Generator:
    """The generator of training step ``step`` of a search seeded ``seed``: every rank draws the same numbers."""
    return seeded_generator(seed, step)
