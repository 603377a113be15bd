"""``InstaCell``: one cell of the InstaNAS meta-graph, several options on at once, per sample.

Each cell has five options that may be on at the same time: MBConv 3×3 e6, 3×3 e3, 5×5 e6, 5×5 e3 and a ResNet
BasicBlock (:data:`OPTIONS`). Its output is the sum of its on-options' outputs plus identity terms where the cell
keeps the shape (stride 1, equal widths); a shape-keeping cell with nothing on is the identity. Where the shape
changes the BasicBlock is forced on for a sample with nothing on (the official rule).

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
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_nas.nn.choice import Choice, freeze_module
from lightning_nas.spaces.blocks import conv_bn, mbconv

__all__ = ["BASIC", "EXECUTIONS", "IDENTITIES", "OPTIONS", "InstaCell", "SumCell", "basic_block"]

BASIC = "basic"
OPTIONS = ("k3_e6", "k3_e3", "k5_e6", "k5_e3", BASIC)  # the paper's order: option 0 is MobileNetV2's block
EXECUTIONS = ("grouped", "masked")
IDENTITIES = ("per_option", "per_cell")


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
