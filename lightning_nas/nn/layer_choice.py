"""``LayerChoice``: one of several candidate modules, running only the active one."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_nas.nn.choice import Choice, freeze_module


class LayerChoice(Choice):
    """Pick one of several candidate modules.

    The active setting is one candidate key (a single path), or a per-sample ``LongTensor`` of
    candidate indices of shape ``(batch,)``: then the batch is grouped by candidate, each group
    runs its candidate only, and the outputs are scattered back in batch order.

    Args:
        candidates: the candidate modules, as a ``{key: module}`` mapping or a list (keys ``"0"``, ``"1"``, ...).
        name: the decision's name; its values are the candidate keys.

    Example::

        op = LayerChoice({"conv3x3": nn.Conv2d(8, 8, 3, padding=1), "conv5x5": nn.Conv2d(8, 8, 5, padding=2)}, "op")
        op.activate_choice({"op": "conv5x5"})
    """

    def __init__(self, candidates: Mapping[str, nn.Module] | Sequence[nn.Module], name: str) -> None:
        super().__init__()
        if isinstance(candidates, Mapping):
            items = list(candidates.items())
        else:
            items = [(str(i), m) for i, m in enumerate(candidates)]
        if not items:
            raise ValueError(f"LayerChoice {name!r} needs at least one candidate.")
        self.name = name
        self.candidates = nn.ModuleDict(items)
        self.keys = [k for k, _ in items]
        self._modules_list = [m for _, m in items]  # plain list: not registered twice
        self._index: int | Tensor = 0

    @property
    def active(self) -> str | Tensor:
        """The active candidate key, or the per-sample index tensor."""
        return self._index if isinstance(self._index, Tensor) else self.keys[self._index]

    def choice_decisions(self) -> dict[str, list[Any]]:
        return {self.name: list(self.keys)}

    def activate_choice(self, arch: Mapping[str, Any]) -> None:
        self.set_active(arch[self.name])

    def set_active(self, value: str | Tensor) -> None:
        """Activate one candidate by key, or one candidate per sample by an index tensor."""
        if isinstance(value, Tensor):
            self._index = value.long()
        else:
            self._index = self.keys.index(value)

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(self._index, Tensor):
            return self._modules_list[self._index](x)
        return self._forward_per_sample(x, self._index)

    def _forward_per_sample(self, x: Tensor, index: Tensor) -> Tensor:
        order = torch.argsort(index, stable=True)
        counts = torch.bincount(index, minlength=len(self.keys)).tolist()
        outputs = []
        for module, chunk in zip(self._modules_list, torch.split(order, counts)):
            if chunk.numel():
                outputs.append(module(x.index_select(0, chunk)))
        out = torch.cat(outputs) if len(outputs) > 1 else outputs[0]
        return out.index_select(0, torch.argsort(order))

    def freeze(self) -> nn.Module:
        if isinstance(self._index, Tensor):
            raise RuntimeError(f"LayerChoice {self.name!r} has a per-sample setting; activate one value to export.")
        return freeze_module(self._modules_list[self._index])

    def extra_repr(self) -> str:
        return f"name={self.name!r}, active={self.active if not isinstance(self._index, Tensor) else 'per-sample'}"
