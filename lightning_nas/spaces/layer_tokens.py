"""``LayerTokenSpace``: NAS-RL's CNN space, one group of tokens per layer, and the child builder.

Zoph & Le, "Neural Architecture Search with Reinforcement Learning", ICLR 2017,
https://arxiv.org/abs/1611.01578. Layer ``i`` of a child is conv(``fh`` × ``fw``, ``filters``,
``stride``)–BN–ReLU; ``layer{i}.skip{j} = 1`` feeds layer ``j``'s output into layer ``i``. Several
inputs are zero-padded (bottom/right) to the largest spatial size and concatenated in depth; a layer
without inputs takes the image; every output nothing consumes goes, padded and concatenated, to the
classifier (global average pool + linear). Children are trained from scratch, so there is no supernet:
the space is a :class:`~lightning_nas.spaces.token_space.TokenSpace` (a ``SearchSpace`` answered from its
controller program): it lists the decisions, validates arch files and builds children (``export``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_nas.arch import ArchError, load_arch
from lightning_nas.spaces.token_space import TokenSpace
from lightning_nas.spaces.tokens import Anchor, Token

__all__ = ["LayerTokenNet", "LayerTokenSpace", "build_child", "child_from_arch_file", "concat_padded", "layer_inputs"]

_LAYER_KEY = re.compile(r"^layer(\d+)\.fh$")


def concat_padded(tensors: Sequence[Tensor]) -> Tensor:
    """Zero-pad feature maps (bottom/right) to the largest height and width, then concatenate channels."""
    if len(tensors) == 1:
        return tensors[0]
    h = max(t.shape[-2] for t in tensors)
    w = max(t.shape[-1] for t in tensors)
    return torch.cat([F.pad(t, [0, w - t.shape[-1], 0, h - t.shape[-2]]) for t in tensors], dim=1)


class ConvBNReLU(nn.Sequential):
    """``fh × fw`` convolution ("same" padding, odd kernels), BatchNorm, ReLU."""

    def __init__(self, in_channels: int, out_channels: int, fh: int, fw: int, stride: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, (fh, fw), stride, (fh // 2, fw // 2), bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class LayerTokenNet(nn.Module):
    """A NAS-RL child network: a plain ``nn.Module`` (``forward_features`` / ``forward_head``).

    Args:
        arch: the layer tokens (``layer{i}.fh/fw/filters[/stride]``, ``layer{i}.skip{j}``).
        num_classes: classifier outputs.
        in_channels: image channels.
    """

    def __init__(self, arch: Mapping[str, Any], num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        n = num_layers_of(arch)
        self.arch = dict(arch)
        self.inputs = [layer_inputs(arch, i) for i in range(n)]
        widths: list[int] = []
        layers = []
        for i in range(n):
            cin = sum(widths[j] for j in self.inputs[i]) if self.inputs[i] else in_channels
            f = int(arch[f"layer{i}.filters"])
            layers.append(ConvBNReLU(cin, f, int(arch[f"layer{i}.fh"]), int(arch[f"layer{i}.fw"]),
                                     int(arch.get(f"layer{i}.stride", 1))))
            widths.append(f)
        self.layers = nn.ModuleList(layers)
        consumed = {j for ins in self.inputs for j in ins}
        self.outputs = [i for i in range(n) if i not in consumed]
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(sum(widths[i] for i in self.outputs), num_classes))

    def forward_features(self, x: Tensor) -> Tensor:
        outs: list[Tensor] = []
        for layer, ins in zip(self.layers, self.inputs):
            outs.append(layer(concat_padded([outs[j] for j in ins]) if ins else x))
        return concat_padded([outs[i] for i in self.outputs])

    def forward_head(self, x: Tensor) -> Tensor:
        return self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.forward_features(x))


def layer_inputs(arch: Mapping[str, Any], i: int) -> list[int]:
    """The layers feeding layer ``i``: its skips; without any skip decision (skips not searched) layer ``i-1``."""
    if i > 0 and f"layer{i}.skip0" not in arch:
        return [i - 1]
    return [j for j in range(i) if int(arch[f"layer{i}.skip{j}"])]


def num_layers_of(arch: Mapping[str, Any]) -> int:
    """The depth of a layer-token arch: layers ``0..n-1`` must each have ``fh``/``fw``/``filters``.

    Raises:
        ArchError: when the layers are not numbered ``0..n-1`` or a token is missing.
    """
    indices = sorted(int(m.group(1)) for k in arch if (m := _LAYER_KEY.match(k)))
    if not indices or indices != list(range(len(indices))):
        raise ArchError(f"a layer-token arch needs keys layer0.fh, layer1.fh, ... numbered from 0; got {indices}")
    for i in indices:
        for token in ("fw", "filters"):
            if f"layer{i}.{token}" not in arch:
                raise ArchError(f"layer-token arch lacks 'layer{i}.{token}'")
    return len(indices)


def build_child(arch: Mapping[str, Any], num_classes: int, in_channels: int = 3) -> nn.Module:
    """Build the child network of a layer-token arch (new, untrained weights)."""
    return LayerTokenNet(arch, num_classes, in_channels)


def child_from_arch_file(path: str | Path, num_classes: int, in_channels: int = 3) -> nn.Module:
    """Build the child of an arch JSON file written by ``save_arch(arch, path, space="LayerTokenSpace")``."""
    return build_child(load_arch(path), num_classes, in_channels)


class LayerTokenSpace(TokenSpace):
    """NAS-RL's layer-token CNN space (no weights: children train from scratch).

    Args:
        num_layers: depth of the archs it samples and of the controller's first program (paper: 6 at the start).
        filter_heights: allowed filter heights (paper: 1, 3, 5, 7).
        filter_widths: allowed filter widths (paper: 1, 3, 5, 7).
        num_filters: allowed numbers of filters (paper: 24, 36, 48, 64).
        strides: allowed strides (paper's second experiment: 1, 2, 3); ``None`` searches no strides (all 1).
        skip_connections: search the anchor-point skip connections; without, each layer feeds the next.
        num_classes: classifier outputs (linked from the datamodule by the CLI).
        input_size: image resolution (linked from the datamodule by the CLI; informational).
        in_channels: image channels.

    Example::

        space = LayerTokenSpace(num_layers=6, strides=[1, 2, 3])
        net = space.export(space.sample(torch.Generator().manual_seed(0)))
    """

    supports_depth = True
    task = "image"

    def __init__(self, num_layers: int = 6, filter_heights: Sequence[int] = (1, 3, 5, 7),
                 filter_widths: Sequence[int] = (1, 3, 5, 7), num_filters: Sequence[int] = (24, 36, 48, 64),
                 strides: Sequence[int] | None = None, skip_connections: bool = True, num_classes: int = 10,
                 input_size: int = 32, in_channels: int = 3) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"LayerTokenSpace needs num_layers >= 1, got {num_layers}")
        if any(k % 2 == 0 for k in (*filter_heights, *filter_widths)):
            raise ValueError("LayerTokenSpace filter sizes must be odd ('same' padding)")
        self.num_layers, self.skip_connections = num_layers, skip_connections
        self.filter_heights, self.filter_widths = tuple(filter_heights), tuple(filter_widths)
        self.num_filters = tuple(num_filters)
        self.strides = tuple(strides) if strides else None
        self.num_classes, self.input_size, self.in_channels = num_classes, input_size, in_channels

    def _tokens(self, i: int) -> list[Token]:
        tokens = [Token(f"layer{i}.fh", self.filter_heights, "fh"), Token(f"layer{i}.fw", self.filter_widths, "fw"),
                  Token(f"layer{i}.filters", self.num_filters, "filters")]
        if self.strides:
            tokens.append(Token(f"layer{i}.stride", self.strides, "stride"))
        return tokens

    def controller_program(self, num_layers: int | None = None) -> list[Token | Anchor]:
        """The controller's steps: per layer its tokens, then its anchor (skips from every earlier layer)."""
        program: list[Token | Anchor] = []
        for i in range(num_layers or self.num_layers):
            program.extend(self._tokens(i))
            if self.skip_connections:
                program.append(Anchor(tuple(f"layer{i}.skip{j}" for j in range(i))))
        return program

    def controller_vocab(self) -> dict[str, tuple[Any, ...]]:
        """``{kind: values}`` of every token kind (shared across layers, so depth can grow)."""
        return {t.kind: t.values for t in self._tokens(0)}

    def depth_of(self, arch: Mapping[str, Any]) -> int:
        """The depth of a layer-token arch, read from its keys (:func:`num_layers_of`)."""
        return num_layers_of(arch)

    def build_child(self, arch: Mapping[str, Any]) -> nn.Module:
        """The child for the search loop (arch from the controller, already valid)."""
        return build_child(arch, self.num_classes, self.in_channels)

    def extra_repr(self) -> str:
        return (f"num_layers={self.num_layers}, filters={self.num_filters}, strides={self.strides}, "
                f"skip_connections={self.skip_connections}")
