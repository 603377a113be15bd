"""The vocabulary of token spaces: a :class:`Token` (one categorical decision), an :class:`Anchor` (a layer's skip
connections), and a :data:`Program` (the ordered steps a controller follows to emit an arch).

Owned by the spaces (``LayerTokenSpace``, ``RNNCellSpace`` build their programs from these); controllers such as
:class:`~lightning_nas.controllers.lstm.LSTMController` read them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Anchor", "Program", "Token", "program_from_decisions"]


@dataclass(frozen=True)
class Token:
    """A categorical decision ``name`` taking one of ``values``; tokens of one ``kind`` share a softmax."""

    name: str
    values: tuple[Any, ...]
    kind: str = ""

    @property
    def key(self) -> str:
        return self.kind or self.name


@dataclass(frozen=True)
class Anchor:
    """An anchor point: ``names[j]`` (values 0/1) says whether the ``j``-th earlier anchor feeds this layer."""

    names: tuple[str, ...] = ()


Program = Sequence[Token | Anchor]


def program_from_decisions(decisions: Mapping[str, Sequence[Any]]) -> list[Token]:
    """One token per decision, each with its own softmax (the generic controller program)."""
    return [Token(name, tuple(values)) for name, values in decisions.items()]
