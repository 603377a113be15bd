"""``InputChoice``: which earlier outputs feed a node."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_nas.nn.choice import Choice


def reduce_inputs(inputs: Sequence[Tensor], chosen: Sequence[int], reduction: str) -> Tensor:
    """Sum, average or concatenate (channels) the chosen inputs."""
    picked = [inputs[i] for i in chosen]
    if len(picked) == 1:
        return picked[0]
    if reduction == "concat":
        return torch.cat(picked, dim=1)
    out = torch.stack(picked).sum(0)
    return out / len(picked) if reduction == "mean" else out


class InputChoice(Choice):
    """Choose ``n_chosen`` of ``n_candidates`` inputs and reduce them.

    The decision's values are input indices (``n_chosen == 1``) or sorted lists of indices.

    Args:
        n_candidates: how many inputs the node is offered.
        n_chosen: how many it takes.
        name: the decision's name.
        reduction: ``"sum"``, ``"mean"`` or ``"concat"`` (along channels) of the chosen inputs.
    """

    def __init__(self, n_candidates: int, n_chosen: int, name: str, reduction: str = "sum") -> None:
        super().__init__()
        if not 1 <= n_chosen <= n_candidates:
            raise ValueError(f"InputChoice {name!r}: n_chosen must be in 1..{n_candidates}, got {n_chosen}.")
        if reduction not in ("sum", "mean", "concat"):
            raise ValueError(f"InputChoice {name!r}: reduction must be sum, mean or concat, got {reduction!r}.")
        self.name, self.n_candidates, self.n_chosen, self.reduction = name, n_candidates, n_chosen, reduction
        if n_chosen == 1:
            self.values: list[Any] = list(range(n_candidates))
        else:
            self.values = [list(c) for c in itertools.combinations(range(n_candidates), n_chosen)]
        self.chosen: list[int] = list(range(n_chosen))

    def choice_decisions(self) -> dict[str, list[Any]]:
        return {self.name: list(self.values)}

    def activate_choice(self, arch: Mapping[str, Any]) -> None:
        value = arch[self.name]
        self.chosen = [int(value)] if self.n_chosen == 1 else [int(v) for v in value]

    def forward(self, inputs: Sequence[Tensor]) -> Tensor:
        return reduce_inputs(inputs, self.chosen, self.reduction)

    def freeze(self) -> nn.Module:
        return FixedInputs(self.chosen, self.reduction)


class FixedInputs(nn.Module):
    """The frozen ``InputChoice``: always the same inputs, the same reduction."""

    def __init__(self, chosen: Sequence[int], reduction: str) -> None:
        super().__init__()
        self.chosen, self.reduction = list(chosen), reduction

    def forward(self, inputs: Sequence[Tensor]) -> Tensor:
        return reduce_inputs(inputs, self.chosen, self.reduction)

    def extra_repr(self) -> str:
        return f"chosen={self.chosen}, reduction={self.reduction!r}"
