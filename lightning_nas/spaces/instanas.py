"""``InstaNASSpace``: the instance-aware MobileNetV2 meta-graph of InstaNAS.

Cheng et al., "InstaNAS: Instance-aware Neural Architecture Search", AAAI 2020,
https://arxiv.org/abs/1811.10201 (official code: AnjieCheng/InstaNAS).

Seventeen cells (MobileNetV2's ``(t, c, n, s)`` stages), each with five options that may be on at the
same time: MBConv 3×3 e6, 3×3 e3, 5×5 e6, 5×5 e3 and a ResNet BasicBlock. A cell's output is the sum
of its on-options' outputs plus identity terms where the cell keeps the shape (stride 1, equal widths);
a shape-keeping cell with nothing on is the identity. Where the shape changes the BasicBlock is forced on
for a sample with nothing on (the official rule).

Cell semantics (``identity`` and ``basic_act``), as the official code has them by default
(``search/models/base.py`` and ``search/models/instanas.py``):

- ``identity="per_option"`` (official): every shape-keeping MBConv option is an ``InvertedResBlock``
  that adds its own input (``out = out + x``), so a cell with ``k`` MBConv options on outputs
  ``Σ op(x) + k·x``; the BasicBlock carries no identity (BasicBlock alone: ``basic(x)``);
  nothing on: ``x``. ``identity="per_cell"`` (our earlier variant): the input is added once per
  shape-keeping cell, whatever is on (``Σ op(x) + x``), as one residual block whose branch is the sum;
- ``basic_act=True`` (official ``BasicBlock``): conv, BN, ReLU, conv, BN, **ReLU6**, so its output is
  non-negative; ``basic_act=False``: the second BN is the output (linear, like an MBConv projection).

A per-sample setting is a 0/1 *policy* tensor of shape ``(batch, cells, options)``
(:meth:`InstaNASSpace.set_policy`). It runs in one of two ways:

- ``"grouped"`` (real instance-aware execution): option ``j`` of cell ``i`` runs only on the rows
  with ``policy[:, i, j] = 1`` (``index_select`` → op → ``index_add`` into the output), so a sample
  with few options on costs less;
- ``"masked"`` (the official code): every option runs on the whole batch and is multiplied by its
  0/1 column; a shape-keeping cell that no sample of the batch uses is skipped (the official early
  exit). Same numbers in eval mode; the speed-up only exists on paper.

In train mode the two differ in BatchNorm: a grouped option normalises with the statistics of the
samples it actually serves, a masked option with those of the whole batch. ``InstaNASModule`` trains
masked by default (the official behaviour) and offers grouped as a named option.

Left as they are (small next to the above): our options use ReLU6 inside (official MBConv: ReLU; official
BasicBlock: ReLU, then ReLU6) and BatchNorm eps 1e-3 (official 1e-5). The official batched forward,
when no sample of a batch uses a shape-changing cell, runs MBConv 3×3 e6 (``layers[t][0]``) instead of
the BasicBlock its per-sample rule and ``forward_single`` use; we always force the BasicBlock.

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

from lightning_nas.nn.choice import Choice, freeze_module
from lightning_nas.spaces.base import SearchSpace
from lightning_nas.spaces.blocks import conv_bn, make_divisible, mbconv
from lightning_nas.spaces.instanas_latency import OptionLatency
from lightning_nas.spaces.mobilenet import _init_weights

__all__ = ["BASIC", "EXECUTIONS", "IDENTITIES", "OPTIONS", "InstaCell", "InstaNASSpace", "OptionLatency", "SumCell",
           "basic_block"]

BASIC = "basic"
OPTIONS = ("k3_e6", "k3_e3", "k5_e6", "k5_e3", BASIC)  # the paper's order: option 0 is MobileNetV2's block
EXECUTIONS = ("grouped", "masked")
IDENTITIES = ("per_option", "per_cell")
MBV2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
               (6, 320, 1, 1))


def basic_block(in_ch: int, out_ch: int, stride: int, act: bool = True) -> nn.Sequential:
    """ResNet's BasicBlock as an option: 3×3 conv (stride), BN, ReLU6, 3×3 conv, BN[, ReLU6].

    Args:
        in_ch: input channels.
        out_ch: output channels.
        stride: stride of the first conv.
        act: end in ReLU6, as the official ``BasicBlock`` (``search/models/base.py``) does; ``False`` leaves
            the output linear like an MBConv projection.
    """
    return nn.Sequential(OrderedDict(
        conv1=conv_bn(in_ch, out_ch, 3, stride),
        conv2=conv_bn(out_ch, out_ch, 3, act=act),
    ))


def _option(name: str, in_ch: int, out_ch: int, stride: int, basic_act: bool) -> nn.Module:
    if name == BASIC:
        return basic_block(in_ch, out_ch, stride, basic_act)
    kernel, expand = int(name[1]), int(name.split("_e")[1])
    return mbconv(in_ch, out_ch, kernel, expand, stride)


def _sum(x: Tensor, ops: Sequence[nn.Module], identity: int) -> Tensor:
    """``identity · x + Σ op(x)`` (``x`` itself, not a copy, when ``identity`` is 1 and nothing else runs)."""
    out = None if identity == 0 else (x if identity == 1 else x * identity)
    for op in ops:
        out = op(x) if out is None else out + op(x)
    return out


class SumCell(nn.Module):
    """An exported cell: ``identity · x`` plus the sum of its fixed options.

    Args:
        options: the on-options.
        identity: how many times the input is added (0 where the shape changes; per-option identity: the
            number of MBConv options; per-cell identity: 1). ``True``/``False`` read as 1/0.
    """

    def __init__(self, options: Sequence[nn.Module], identity: int) -> None:
        super().__init__()
        self.options, self.identity = nn.ModuleList(options), int(identity)

    def forward(self, x: Tensor) -> Tensor:
        return _sum(x, self.options, self.identity)

    def extra_repr(self) -> str:
        return f"identity={self.identity}"


class InstaCell(Choice):
    """One InstaNAS cell: options that may be on together, summed.

    The active setting is a tuple of 0/1 flags (one policy for the batch, from an arch) or a per-sample
    0/1 tensor of shape ``(batch, options)`` run as ``execution`` says (``"grouped"`` or ``"masked"``).

    Args:
        index: the cell's position; its decisions are ``"cells.{index}.{option}"``.
        in_ch: input channels.
        out_ch: output channels.
        stride: stride of every option.
        options: option names (``"k{K}_e{E}"`` or ``"basic"``).
        identity: ``"per_option"`` (official: each on MBConv option adds the input, ``k`` options → ``k·x``)
            or ``"per_cell"`` (the input once, whatever is on); only shape-keeping cells add it.
        basic_act: the BasicBlock ends in ReLU6 (official) rather than linearly.
    """

    def __init__(self, index: int, in_ch: int, out_ch: int, stride: int, options: Sequence[str] = OPTIONS,
                 identity: str = "per_option", basic_act: bool = True) -> None:
        super().__init__()
        if identity not in IDENTITIES:
            raise ValueError(f"identity must be one of {IDENTITIES}, got {identity!r}")
        self.index, self.option_names, self.identity = index, tuple(options), identity
        self.names = [f"cells.{index}.{o}" for o in options]
        self.options = nn.ModuleList([_option(o, in_ch, out_ch, stride, basic_act) for o in options])
        self.shortcut = stride == 1 and in_ch == out_ch
        self.basic = self.option_names.index(BASIC)
        self.forced = None if self.shortcut else self.basic  # runs when nothing is on
        self.execution = "grouped"
        self._flags: tuple[int, ...] = (1,) * len(options)  # the arch's setting (all on until activated)
        self._mask: Tensor | None = None  # a per-sample setting, which takes precedence

    def choice_decisions(self) -> dict[str, list[Any]]:
        return {n: [0, 1] for n in self.names}

    def activate_choice(self, arch: Mapping[str, Any]) -> None:
        self._flags = tuple(int(arch[n]) for n in self.names)

    def set_mask(self, mask: Tensor | None) -> None:
        """A per-sample ``(batch, options)`` 0/1 setting, or ``None`` for the arch's flags again."""
        self._mask = mask

    def effective(self, mask: Tensor) -> Tensor:
        """``mask`` with the forced BasicBlock turned on for rows with nothing on (shape-changing cells)."""
        if self.forced is None:
            return mask
        empty = mask.sum(1) == 0
        if not bool(empty.any()):
            return mask
        mask = mask.clone()
        mask[empty, self.forced] = 1
        return mask

    def identity_count(self, on: Sequence[int]) -> int:
        """How many times a sample with the options ``on`` (indices) adds its input to the cell's output."""
        if not self.shortcut:
            return 0
        if self.identity == "per_cell" or not on:
            return 1
        return sum(1 for j in on if j != self.basic)

    def identity_counts(self, mask: Tensor) -> Tensor:
        """:meth:`identity_count` of every row of a ``(batch, options)`` 0/1 mask (shape-keeping cells only)."""
        total = mask.sum(1)
        if self.identity == "per_cell":
            return torch.ones_like(total)
        return total - mask[:, self.basic] + (total == 0).to(mask.dtype)

    def _with_identity(self, x: Tensor, mask: Tensor) -> Tensor | None:
        """The identity terms of a per-sample mask: ``None`` where the shape changes."""
        if not self.shortcut:
            return None
        if self.identity == "per_cell":
            return x.clone()
        return x * self.identity_counts(mask).view(-1, 1, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        if self._mask is None:
            return self._forward_fixed(x, self._flags)
        mask = self.effective(self._mask.to(x.dtype))
        return self._forward_masked(x, mask) if self.execution == "masked" else self._forward_grouped(x, mask)

    def _forward_fixed(self, x: Tensor, flags: tuple[int, ...]) -> Tensor:
        on = [j for j, f in enumerate(flags) if f]
        if not on and self.forced is not None:
            on = [self.forced]
        return _sum(x, [self.options[j] for j in on], self.identity_count(on))

    def _forward_grouped(self, x: Tensor, mask: Tensor) -> Tensor:
        """Each option on exactly the rows that run it; rows with nothing on pass through the shortcut."""
        out = self._with_identity(x, mask)
        rows = mask.t().bool()
        counts = rows.sum(1).tolist()
        for j, (op, n) in enumerate(zip(self.options, counts)):
            if n == 0:
                continue
            if n == len(x):  # the whole batch: no gather, no scatter
                y = op(x)
                out = y if out is None else out + y
                continue
            index = rows[j].nonzero().squeeze(1)
            y = op(x.index_select(0, index))
            if out is None:
                out = y.new_zeros((len(x), *y.shape[1:]))
            out = out.index_add(0, index, y)
        return out

    def _forward_masked(self, x: Tensor, mask: Tensor) -> Tensor:
        """Every option on the whole batch, multiplied by its 0/1 column (the official execution).

        A shape-keeping cell no row uses returns its input without running anything, as the official
        forward does (``search/models/instanas.py``): its BatchNorms then see no batch statistics.
        """
        if self.shortcut and not bool(mask.any()):
            return x
        out = self._with_identity(x, mask)
        for j, op in enumerate(self.options):
            y = op(x) * mask[:, j].view(-1, 1, 1, 1)
            out = y if out is None else out + y
        return out

    def freeze(self) -> nn.Module:
        if self._mask is not None:
            raise RuntimeError(f"cell {self.index} has a per-sample policy; activate one arch to export.")
        on = [j for j, f in enumerate(self._flags) if f] or ([self.forced] if self.forced is not None else [])
        if not on:
            return nn.Identity()
        return SumCell([freeze_module(self.options[j]) for j in on], self.identity_count(on))

    def extra_repr(self) -> str:
        return f"index={self.index}, shortcut={self.shortcut}, identity={self.identity}"


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
            default: one residual around the sum of the options). See the module docstring.
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
