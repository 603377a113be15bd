"""``TokenSpace``: a :class:`~lightning_nas.spaces.SearchSpace` whose archs a controller emits token by token and
whose children are trained from scratch (NAS-RL's ``LayerTokenSpace`` and ``RNNCellSpace``).

Such a space has no supernet and no weights: what the ``SearchSpace`` interface asks of it is answered from its
controller program (:mod:`lightning_nas.spaces.tokens`):

- ``decisions(num_layers=None)``: every token's values, an anchor's skips as 0/1, in controller order;
- ``sample`` / ``validate``: uniform draws and checks against those decisions (at the arch's own depth);
- ``activate(arch)``: records the arch (``active_arch``); there are no choice modules to set;
- ``export(arch)``: the child network, with fresh weights (``build_child`` for an arch already checked);
- ``settings`` / ``fingerprint``: as every space, so arch files (format 2) name the exact space they fit.

``forward`` and ``cost_units`` have nothing to run: they say so (build the child with ``export``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from lightning_nas.arch import Arch, ArchError, check_arch
from lightning_nas.spaces.base import SearchSpace
from lightning_nas.spaces.tokens import Anchor, Token

__all__ = ["TokenSpace"]


class TokenSpace(SearchSpace):
    """Base of the controller spaces; subclasses give the program, its vocabulary and the child builder.

    Class attributes: ``task`` (``"image"`` or ``"text"``: the children's data and reward) and
    ``supports_depth`` (whether the program's depth can grow during a search).
    """

    task: str = ""
    supports_depth: bool = False

    # --- what a subclass gives ---------------------------------------------------------------
    def controller_program(self, num_layers: int | None = None) -> list[Token | Anchor]:
        """The controller's steps for an arch of ``num_layers`` layers (default: the space's)."""
        raise NotImplementedError

    def controller_vocab(self) -> dict[str, tuple[Any, ...]]:
        """``{kind: values}`` of every token kind (tokens of one kind share the controller's softmax)."""
        raise NotImplementedError

    def build_child(self, arch: Mapping[str, Any]) -> nn.Module:
        """The child network of an arch already checked (fresh weights)."""
        raise NotImplementedError

    def depth_of(self, arch: Mapping[str, Any]) -> int | None:
        """The depth an arch was emitted at (``None``: the space's fixed program)."""
        return None

    # --- the SearchSpace interface --------------------------------------------------------------
    def decisions(self, num_layers: int | None = None) -> dict[str, list[Any]]:
        """``{name: values}`` in controller order (skip decisions take 0 or 1)."""
        out: dict[str, list[Any]] = {}
        for step in self.controller_program(num_layers):
            if isinstance(step, Token):
                out[step.name] = list(step.values)
            else:
                out.update({name: [0, 1] for name in step.names})
        return out

    def validate(self, arch: Mapping[str, Any]) -> Arch:
        """Return ``arch`` with canonical values, checked at its own depth.

        Raises:
            ArchError: naming the missing, unknown or invalid key and the allowed values.
        """
        if not isinstance(arch, Mapping):
            raise ArchError(f"An arch must be a mapping of decision name to value, got {type(arch).__name__}.")
        arch = {k: int(v) if isinstance(v, bool) else v for k, v in arch.items()}
        return check_arch(arch, self.decisions(self.depth_of(arch)), self.space_name)

    def sample(self, generator: torch.Generator | None = None, num_layers: int | None = None) -> Arch:
        """A uniformly drawn arch (each skip on with probability 1/2) of ``num_layers`` layers."""
        decisions = self.decisions(num_layers)
        u = torch.rand(len(decisions), generator=generator, dtype=torch.float64).tolist()
        return {k: v[min(int(x * len(v)), len(v) - 1)] for (k, v), x in zip(decisions.items(), u)}

    def export(self, arch: Mapping[str, Any]) -> nn.Module:
        """The child network of ``arch`` (validated), with fresh weights."""
        return self.build_child(self.validate(arch))

    def forward(self, x: Tensor) -> Tensor:
        raise TypeError(f"{self.space_name} has no supernet to run: its children train from scratch; build one "
                        "with space.export(arch)")

    def forward_features(self, x: Tensor) -> Tensor:
        return self.forward(x)

    def cost_units(self) -> list[tuple[str, nn.Module, list[str]]]:
        raise TypeError(f"{self.space_name} has no supernet blocks to cost: cost a child, space.export(arch)")
