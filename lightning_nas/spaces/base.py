"""``SearchSpace``: the interface every supernet offers to every method."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from lightning_nas.arch import Arch, RecordsSettings, check_arch, values_equal
from lightning_nas.nn.choice import Choice, freeze_module


class SubNetwork(nn.Module):
    """A standalone network exported from a space: ``stem → features → head``, no choice modules.

    ``forward_features`` returns the last feature map, ``forward_head`` the logits.
    """

    def __init__(self, stem: nn.Module, features: nn.Module, head: nn.Module, arch: Arch | None = None,
                 space_name: str = "") -> None:
        super().__init__()
        self.stem, self.features, self.head = stem, features, head
        self.arch, self.space_name = dict(arch or {}), space_name

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(self.stem(x))

    def forward_head(self, x: Tensor) -> Tensor:
        return self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(self.stem(x)))


class SearchSpace(RecordsSettings, nn.Module):
    """A supernet made of choice modules.

    Subclasses build ``self.stem``, ``self.features`` and ``self.head`` (a forward is
    ``head(features(stem(x)))`` on the active path) in input-to-output order, and set
    ``self.input_size`` and ``self.num_classes``. Everything else is shared:

    - ``decisions()``: ``{name: [values]}`` ordered from input to output;
    - ``sample(generator)``: a uniformly drawn arch;
    - ``activate(arch)``: set every choice; the next forward runs that path only;
    - ``export(arch)``: a standalone :class:`SubNetwork` with the chosen weights copied out;
    - ``validate(arch)``: raises :class:`~lightning_nas.ArchError` on a bad arch.
    """

    input_size: int
    num_classes: int
    in_channels: int = 3

    @property
    def space_name(self) -> str:
        return type(self).__name__

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(self.stem(x)))

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(self.stem(x))

    # --- decisions -------------------------------------------------------------------------
    def choice_modules(self) -> list[Choice]:
        """The choice modules of the supernet, input to output (cached)."""
        cached = self.__dict__.get("_choice_cache")
        if cached is None:
            cached = [m for m in self.modules() if isinstance(m, Choice)]
            self.__dict__["_choice_cache"] = cached
        return cached

    def decisions(self) -> dict[str, list[Any]]:
        """Every decision of the space, ``{name: [allowed values]}``, ordered from input to output."""
        cached = self.__dict__.get("_decision_cache")
        if cached is None:
            cached = {}
            for module in self.choice_modules():
                for name, values in module.choice_decisions().items():
                    if name in cached and not values_equal(cached[name], values):
                        raise ValueError(f"decision {name!r} is declared twice with different values")
                    cached.setdefault(name, list(values))
            self.__dict__["_decision_cache"] = cached
        return {k: list(v) for k, v in cached.items()}

    def validate(self, arch: Mapping[str, Any]) -> Arch:
        """Return ``arch`` with canonical values, or raise :class:`ArchError` naming the bad key."""
        return check_arch(arch, self.__dict__.get("_decision_cache") or self.decisions(), self.space_name)

    def sample(self, generator: torch.Generator | None = None) -> Arch:
        """Draw one value per decision uniformly at random."""
        decisions = self.__dict__.get("_decision_cache") or self.decisions()
        u = torch.rand(len(decisions), generator=generator, dtype=torch.float64).tolist()
        return {k: v[min(int(x * len(v)), len(v) - 1)] for (k, v), x in zip(decisions.items(), u)}

    def activate(self, arch: Mapping[str, Any], validate: bool = True) -> None:
        """Set every choice module to ``arch``; the next forward runs that path only."""
        if validate:
            arch = self.validate(arch)
        for module in self.choice_modules():
            module.activate_choice(arch)
        self.__dict__["_active_arch"] = dict(arch)

    @property
    def active_arch(self) -> Arch | None:
        """The arch last activated (``None`` before any)."""
        arch = self.__dict__.get("_active_arch")
        return dict(arch) if arch is not None else None

    def export(self, arch: Mapping[str, Any]) -> nn.Module:
        """A standalone network for ``arch``: slices materialised, unchosen candidates dropped."""
        arch = self.validate(arch)
        previous = self.active_arch
        self.activate(arch, validate=False)
        try:
            net = SubNetwork(freeze_module(self.stem), freeze_module(self.features), freeze_module(self.head),
                             arch, self.space_name)
        finally:
            if previous is not None:
                self.activate(previous, validate=False)
        return net.train(self.training)

    def cost_units(self) -> list[tuple[str, nn.Module, list[str]]]:
        """Units whose cost depends only on their own decisions: ``(name, module, decision names)``.

        By default each block of ``self.features`` that owns decisions (``nn.Sequential`` stages are
        walked into). Spaces whose blocks interact override this.
        """
        units: list[tuple[str, nn.Module, list[str]]] = []

        def walk(prefix: str, module: nn.Module) -> None:
            for name, child in module.named_children():
                if isinstance(child, nn.Sequential):
                    walk(f"{prefix}.{name}", child)
                    continue
                keys = [k for m in child.modules() if isinstance(m, Choice) for k in m.choice_decisions()]
                if keys:
                    units.append((f"{prefix}.{name}", child, list(dict.fromkeys(keys))))

        walk("features", self.features)
        return units

    # --- identity --------------------------------------------------------------------------
    def fingerprint(self) -> str:
        """A short hash of the space's name, input size, parameter shapes and decisions."""
        shapes = [(n, list(p.shape)) for n, p in self.named_parameters()]
        doc = {"space": self.space_name, "input_size": getattr(self, "input_size", None), "shapes": shapes,
               "decisions": self.decisions()}
        return hashlib.sha1(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:12]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_choice_cache", None)  # rebuilt lazily after unpickling (DDP spawn)
        return state
