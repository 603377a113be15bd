"""``InstaNASSpace``: the instance-aware MobileNetV2 meta-graph of InstaNAS.

Cheng et al., "InstaNAS: Instance-aware Neural Architecture Search", AAAI 2020,
https://arxiv.org/abs/1811.10201 (official code: AnjieCheng/InstaNAS).

Seventeen cells (MobileNetV2's ``(t, c, n, s)`` stages), each with five options that may be on at the
same time: MBConv 3×3 e6, 3×3 e3, 5×5 e6, 5×5 e3 and a ResNet BasicBlock. A cell's output is the sum
of its on-options' outputs plus identity terms where the cell keeps the shape (stride 1, equal widths);
a shape-keeping cell with nothing on is the identity. Where the shape changes the BasicBlock is forced on
for a sample with nothing on (the official rule).

A cell's semantics (``identity``, ``basic_act``) and its two ways of running a per-sample *policy*
(``"grouped"``: real instance-aware execution; ``"masked"``: the official code) are described in
:mod:`lightning_nas.spaces.instanas_cell`. ``InstaNASModule`` trains masked by default (the official behaviour)
and offers grouped as a named option.

As an ordinary :class:`~lightning_nas.spaces.SearchSpace` (one policy for every sample) each option
is its own decision ``"cells.{i}.{option}"`` with values ``[0, 1]``; ``export(arch)`` gives a plain
network with only the on-options of each cell.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_nas.spaces.base import SearchSpace
from lightning_nas.spaces.blocks import conv_bn, make_divisible
from lightning_nas.spaces.instanas_cell import BASIC, EXECUTIONS, IDENTITIES, OPTIONS, InstaCell
from lightning_nas.spaces.mobilenet import _init_weights

__all__ = ["InstaNASSpace"]

MBV2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
               (6, 320, 1, 1))


def _strides(input_size: int, stage_strides: Sequence[int]) -> tuple[int, list[int]]:
    """Stem and stage strides: ≤ 32 px (CIFAR) stem 1 and stage 2 stride 1; ≤ 64 px stem 1; else stem 2."""
    strides = [int(s) for s in stage_strides]
    if input_size <= 32:
        return 1, [strides[0], 1, *strides[2:]]
    return (1 if input_size <= 64 else 2), strides


class InstaNASSpace(SearchSpace):
    """The InstaNAS meta-graph: stem, 17 multi-option cells, MobileNetV2 head.

    Stem 3×3 conv (32 channels) → BN → ReLU6; the cells of ``stages`` (``(t, c, n, s)``; ``t`` is unused:
    the options set their own expansion); 1×1 conv to ``head_channels``, BN, ReLU6, average pool,
    (dropout,) linear. Widths are ``make_divisible(c × width_mult)``; the head is scaled only above 1.

    Strides by input size: ≤ 32 px (CIFAR) stem 1 and stage 2 stride 1 (32 → 32 → 32 → 16 → 8 → 8 → 4 → 4);
    ≤ 64 px (TinyImageNet) stem 1; larger (ImageNet) stem 2.

    Args:
        num_classes: classifier outputs.
        input_size: input height/width (picks the strides).
        width_mult: width multiplier.
        stem_channels: stem width.
        head_channels: feature-mix width.
        stages: ``(t, c, n, s)`` per stage (default MobileNetV2's 17 cells).
        options: the option names of every cell (default the paper's five).
        dropout: dropout before the classifier.
        identity: ``"per_option"`` (official: each on MBConv option of a shape-keeping cell adds the input,
            ``k`` options → ``k·x``) or ``"per_cell"`` (the input once per shape-keeping cell, our earlier
            default: one residual around the sum of the options). See :mod:`lightning_nas.spaces.instanas_cell`.
        basic_act: the BasicBlock option ends in ReLU6 (official) or, ``False``, linearly (our earlier default).

    Example::

        space = InstaNASSpace(num_classes=10, input_size=32, width_mult=0.25)
        policy = torch.randint(0, 2, (4, space.num_cells, space.num_options))
        logits = space.forward_policy(torch.randn(4, 3, 32, 32), policy)  # grouped execution
    """

    def __init__(
        self, num_classes: int = 1000, input_size: int = 224, width_mult: float = 1.0, stem_channels: int = 32,
        head_channels: int = 1280, stages: Sequence[Sequence[int]] = MBV2_STAGES, options: Sequence[str] = OPTIONS,
        dropout: float = 0.0, identity: str = "per_option", basic_act: bool = True,
    ) -> None:
        super().__init__()
        if identity not in IDENTITIES:
            raise ValueError(f"identity must be one of {IDENTITIES}, got {identity!r}")
        if BASIC not in options or len(set(options)) != len(options):
            raise ValueError(f"InstaNASSpace options must be distinct and include {BASIC!r} (forced where the "
                             f"shape changes), got {list(options)}")
        self.num_classes, self.input_size, self.option_names = num_classes, input_size, tuple(options)
        self.identity, self.basic_act = identity, basic_act
        self.stem_stride, strides = _strides(input_size, [s[3] for s in stages])
        in_ch = make_divisible(stem_channels * width_mult)
        self.stem = conv_bn(self.in_channels, in_ch, 3, self.stem_stride)
        cells: list[InstaCell] = []
        for (_, c, n, _), stride in zip(stages, strides):
            out_ch = make_divisible(c * width_mult)
            for k in range(n):
                cells.append(InstaCell(len(cells), in_ch, out_ch, stride if k == 0 else 1, options, identity,
                                       basic_act))
                in_ch = out_ch
        self.features = nn.Sequential(*cells)
        head_ch = make_divisible(head_channels * width_mult) if width_mult > 1.0 else head_channels
        head: list[tuple[str, nn.Module]] = [("mix", conv_bn(in_ch, head_ch, 1)), ("pool", nn.AdaptiveAvgPool2d(1)),
                                             ("flatten", nn.Flatten(1))]
        if dropout > 0:
            head.append(("dropout", nn.Dropout(dropout)))
        head.append(("classifier", nn.Linear(head_ch, num_classes)))
        self.head = nn.Sequential(OrderedDict(head))
        _init_weights(self)

    @property
    def cells(self) -> list[InstaCell]:
        return list(self.features)

    @property
    def num_cells(self) -> int:
        return len(self.features)

    @property
    def num_options(self) -> int:
        return len(self.option_names)

    def forced_mask(self) -> Tensor:
        """``(cells, options)`` bool: the option each cell forces when nothing is on (none for shortcut cells)."""
        out = torch.zeros(self.num_cells, self.num_options, dtype=torch.bool)
        for i, cell in enumerate(self.cells):
            if cell.forced is not None:
                out[i, cell.forced] = True
        return out

    def effective_policy(self, policy: Tensor) -> Tensor:
        """``policy`` (``(batch, cells, options)``) with the forced options turned on where a row is empty."""
        forced = self.forced_mask().to(policy.device)
        empty = (policy.sum(2, keepdim=True) == 0) & forced.any(1).view(1, -1, 1)
        return torch.where(empty & forced.unsqueeze(0), torch.ones_like(policy), policy)

    # --- per-sample execution -------------------------------------------------------------
    def set_policy(self, policy: Tensor | None, execution: str = "grouped") -> None:
        """Give every sample its own on-options (``(batch, cells, options)`` 0/1), or ``None`` to go back to the arch.

        Raises:
            ValueError: on a wrong shape or an unknown execution.
        """
        if execution not in EXECUTIONS:
            raise ValueError(f"execution must be one of {EXECUTIONS}, got {execution!r}")
        if policy is not None and (policy.dim() != 3 or tuple(policy.shape[1:]) != (self.num_cells, self.num_options)):
            raise ValueError(f"a policy has shape (batch, {self.num_cells}, {self.num_options}), got "
                             f"{tuple(policy.shape)}")
        for i, cell in enumerate(self.cells):
            cell.execution = execution
            cell.set_mask(None if policy is None else policy[:, i])

    def forward_policy(self, x: Tensor, policy: Tensor, execution: str = "grouped") -> Tensor:
        """Logits of ``x`` under a per-sample ``policy``, run ``"grouped"`` (instance-aware) or ``"masked"``."""
        self.set_policy(policy, execution)
        try:
            return self(x)
        finally:
            self.set_policy(None)

    def masked_forward(self, x: Tensor, policy: Tensor) -> Tensor:
        """Every option on the whole batch, multiplied by the policy: the official (reference) execution."""
        return self.forward_policy(x, policy, "masked")

    # --- policies and archs ---------------------------------------------------------------
    def arch_of(self, policy: Tensor) -> dict[str, int]:
        """The arch of one sample's policy (``(cells, options)`` 0/1)."""
        flat = policy.reshape(self.num_cells, self.num_options).tolist()
        return {f"cells.{i}.{o}": int(flat[i][j] > 0) for i in range(self.num_cells)
                for j, o in enumerate(self.option_names)}

    def policy_of(self, arch: Mapping[str, Any]) -> Tensor:
        """The ``(cells, options)`` 0/1 float tensor of an arch."""
        return torch.tensor([[float(arch[f"cells.{i}.{o}"]) for o in self.option_names]
                             for i in range(self.num_cells)])

    def cell_input_shapes(self, batch_size: int = 1, with_output: bool = False) -> list[tuple[int, ...]]:
        """The input shape of every cell for a batch of ``batch_size`` (meta device: no arithmetic).

        With ``with_output`` the last entry is the head's input shape.
        """
        shapes: list[tuple[int, ...]] = []
        x = torch.empty(batch_size, self.in_channels, self.input_size, self.input_size, device="meta")
        with torch.no_grad():
            x = torch.func.functional_call(self.stem, _meta(self.stem), (x,))
            for cell in self.cells:
                shapes.append(tuple(x.shape))
                basic = cell.options[cell.option_names.index(BASIC)]
                x = torch.func.functional_call(basic, _meta(basic), (x,))
        return shapes + [tuple(x.shape)] if with_output else shapes


def _meta(module: nn.Module) -> dict[str, Tensor]:
    named = list(module.named_parameters()) + list(module.named_buffers())
    return {n: torch.empty_like(t, device="meta") for n, t in named}
