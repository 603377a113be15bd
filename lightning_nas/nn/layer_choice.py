"""``LayerChoice``: one of several candidate modules, running only the active one."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_nas.nn.choice import Choice, freeze_module


class LayerChoice(Choice):
    """Pick one of several candidate modules.

    The active setting is one candidate key (a single path), or a per-sample ``LongTensor`` of
    candidate indices of shape ``(batch,)``: then the batch is grouped by candidate, each group
    runs its candidate only, and the outputs are scattered back in batch order.

    What is active, for code that drives the choice (a path sampler, the binary gates): ``active`` (the key),
    ``active_index`` (its position in ``keys``, or the per-sample tensor; settable), ``active_module`` (the
    candidate that runs on a single path) and ``candidate(i)`` (the ``i``-th candidate module).

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

    @property
    def active_index(self) -> int | Tensor:
        """The active candidate's position in ``keys``, or the per-sample ``LongTensor`` of positions."""
        return self._index

    @active_index.setter
    def active_index(self, value: int | Tensor) -> None:
        if isinstance(value, Tensor):
            self._index = value.long()
            return
        if not 0 <= int(value) < len(self.keys):
            raise IndexError(f"LayerChoice {self.name!r} has {len(self.keys)} candidates; got index {value}")
        self._index = int(value)

    @property
    def active_module(self) -> nn.Module:
        """The candidate the single active path runs.

        Raises:
            RuntimeError: the setting is per-sample (several candidates run).
        """
        if isinstance(self._index, Tensor):
            raise RuntimeError(f"LayerChoice {self.name!r} has a per-sample setting: no single active candidate.")
        return self._modules_list[self._index]

    def candidate(self, index: int) -> nn.Module:
        """The candidate module at position ``index`` of ``keys``."""
        return self._modules_list[index]

    def choice_decisions(self) -> dict[str, list[Any]]:
        return {self.name: list(self.keys)}

    def activate_choice(self, arch: Mapping[str, Any]) -> None:
        self.set_active(arch[self.name])

    def set_active(self, value: str | Tensor) -> None:
        """Activate one candidate by key, or one candidate per sample by an index tensor."""
        self.active_index = value if isinstance(value, Tensor) else self.keys.index(value)

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
        return freeze_module(self.active_module)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, active={self.active if not isinstance(self._index, Tensor) else 'per-sample'}"


def inactive_parameters(choices: Iterable[nn.Module],
                        cache: dict[tuple[int, int], list[nn.Parameter]]) -> list[nn.Parameter]:
    """Parameters of the ``LayerChoice`` candidates that the active single paths of ``choices`` do not run.

    Other modules in ``choices``, and choices with a per-sample setting, are skipped. ``cache`` (keyed by
    choice and active index) is reused across calls, so a training step pays for each setting once.

    Example::

        cache = {}
        loss.backward()
        for p in inactive_parameters(space.choice_modules(), cache):
            p.grad = None  # candidates that did not run get no momentum or weight-decay update
    """
    out: list[nn.Parameter] = []
    for choice in choices:
        if isinstance(choice, LayerChoice) and not isinstance(choice.active_index, Tensor):
            key = (id(choice), choice.active_index)
            if key not in cache:
                active = {id(p) for p in choice.active_module.parameters()}
                cache[key] = [p for p in choice.parameters() if id(p) not in active]
            out.extend(cache[key])
    return out
