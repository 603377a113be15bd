"""``DartsCellSpace``: the DARTS cell space (normal and reduction cells), searched by PARSEC.

Liu, Simonyan, Yang, "DARTS: Differentiable Architecture Search", ICLR 2019, https://arxiv.org/abs/1806.09055;
Casale, Gordon, Fusi, "Probabilistic Neural Architecture Search", https://arxiv.org/abs/1902.05116.

**Decisions** (shared by every normal cell, and by every reduction cell, like a DARTS genotype): for cell
type ``t`` in ``normal``/``reduce``, intermediate node ``i`` and input slot ``j`` in ``{0, 1}``,
``f"{t}.node{i}.in{j}"`` (the index of an earlier node: 0 and 1 are the two cell inputs, ``k + 2`` is
intermediate node ``k``) and ``f"{t}.node{i}.op{j}"`` (an op name). The two slots of a node are
independent: they may pick the same input, and the node then sums two ops (with their own weights) of it.

**Op weights** (``op_weights``): a forward runs exactly one op per slot — the memory and compute of one
architecture — whichever way the weights are kept.

- ``"per_edge"`` (default): one op per (edge, op name), an edge being one slot's connection to one input
  (node ``i``, slot ``j``, input ``k``): no op's weights ever see two different inputs, as in DARTS' supernet
  (Liu et al., official ``cnn/model_search.py``: one ``MixedOp``, i.e. one set of weights per op, on every
  (node, input) edge). DARTS' two chosen inputs of a node are two distinct edges; here the two slots are
  independent choices of PARSEC's prior (they may pick the same input), so each slot keeps its own edges
  rather than sharing a (node, input) edge with the other slot: twice DARTS' count, ``2 · Σ_i (i + 2)`` edges
  × ops per cell (28 × 7 for DARTS' 4-node cell, against DARTS' 14 × 7). Sharing one module between the two
  slots would tie weights across two cost units, which the cost tables refuse (and make an arch whose slots
  agree run one module twice).
- ``"shared"``: one op per (slot, op name), shared by all the inputs the slot can take (in a reduction
  cell: one stride-2 op per name for the cell inputs 0/1, one stride-1 op per name for the intermediate
  nodes, which are already reduced); an op's weights see whichever input the slot picks. 2 · nodes slots ×
  ops in a normal cell (8 × 7), 2 · (2 · nodes − 1) × ops in a reduction cell (14 × 7). This was the only
  layout before ``op_weights`` existed; its parameter names are unchanged, so its checkpoints still load
  with ``op_weights="shared"``.

Both hold the same decisions and export the same networks for an arch, so arch files and PARSEC priors
move freely between them; only checkpoints (the fingerprint counts the parameters) are tied to one.

**Cost units**: each op bank (one slot's ops at one stride) is a unit keyed by the slot's op decision;
also by its input decision where the op that runs depends on it (per-edge weights; in reduction cells a
stride-2 ``skip_connect`` is a ``FactorizedReduce``, a stride-1 one is free). A bank that is not active
still gets called, returning ``None`` at once, so that the cost table sees the input shape of every bank.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_nas.arch import Arch
from lightning_nas.nn.choice import Choice, freeze_module
from lightning_nas.spaces.base import SearchSpace, SubNetwork
from lightning_nas.spaces.darts_ops import (
    DARTS_OPS,
    NONE,
    OP_BUILDERS,
    AuxiliaryHead,
    FactorizedReduce,
    ReLUConvBN,
    build_op,
    drop_path,
)

__all__ = ["OP_WEIGHTS", "DartsCell", "DartsCellSpace", "DartsNetwork", "DartsStem", "OpBank"]

CELL_TYPES = ("normal", "reduce")
OP_WEIGHTS = ("per_edge", "shared")


def edge_key(index: int, op: str) -> str:
    """The key of input ``index``'s op ``op`` in a per-edge bank (``"in3_sep_conv_3x3"``)."""
    return f"in{index}_{op}"


def _input_groups(node: int, reduction: bool) -> list[tuple[int, tuple[int, ...]]]:
    """``(stride, inputs)`` of each bank of a slot: inputs of one resolution share a bank."""
    if not reduction:
        return [(1, tuple(range(node + 2)))]
    return [(2, (0, 1))] + ([(1, tuple(range(2, node + 2)))] if node > 0 else [])


def _bank_ops(ops: Sequence[str], channels: int, stride: int, inputs: Sequence[int], per_edge: bool) -> nn.ModuleDict:
    if not per_edge:
        return nn.ModuleDict({name: build_op(name, channels, stride) for name in ops})
    return nn.ModuleDict({edge_key(k, name): build_op(name, channels, stride) for k in inputs for name in ops})


class OpBank(Choice):
    """The candidate ops of one input slot at one stride; runs the active op when the slot's input is its own.

    Args:
        cell_type: ``"normal"`` or ``"reduce"``.
        node: the intermediate node (0-based).
        slot: the input slot (0 or 1).
        ops: the op modules, keyed by op name (shared weights) or by :func:`edge_key` (per-edge weights).
        op_names: the op names.
        inputs: the input indices this bank serves.
        per_edge: whether ``ops`` holds one op per (input, name).
    """

    def __init__(self, cell_type: str, node: int, slot: int, ops: nn.ModuleDict, op_names: Sequence[str],
                 inputs: Sequence[int], per_edge: bool = False) -> None:
        super().__init__()
        self.in_name, self.op_name = f"{cell_type}.node{node}.in{slot}", f"{cell_type}.node{node}.op{slot}"
        self.n_inputs, self.inputs, self.op_names = node + 2, tuple(inputs), list(op_names)
        self.ops, self.per_edge = ops, per_edge
        self.active_op, self.index, self.live = self.op_names[0], self.inputs[0], True

    def choice_decisions(self) -> dict[str, list[Any]]:
        return {self.in_name: list(range(self.n_inputs)), self.op_name: list(self.op_names)}

    def activate_choice(self, arch: Mapping[str, Any]) -> None:
        self.index, self.active_op = int(arch[self.in_name]), arch[self.op_name]
        self.live = self.index in self.inputs

    def active_module(self) -> nn.Module:
        """The op that runs for the active (input, op) (meaningful while the bank is live)."""
        return self.ops[edge_key(self.index, self.active_op) if self.per_edge else self.active_op]

    def cost_keys(self) -> list[str]:
        """The decisions this bank's cost depends on (the input too where the op that runs depends on it)."""
        if self.per_edge or len(self.inputs) < self.n_inputs:
            return [self.in_name, self.op_name]
        return [self.op_name]

    def forward(self, x: Tensor) -> Tensor | None:
        return self.active_module()(x) if self.live else None

    def freeze(self) -> nn.Module:
        return freeze_module(self.active_module())

    def extra_repr(self) -> str:
        return f"{self.op_name}, inputs={list(self.inputs)}, active=({self.index}, {self.active_op!r})"


class InputSlot(nn.Module):
    """One input of an intermediate node: the op banks (one per stride) of that slot."""

    def __init__(self, cell_type: str, node: int, slot: int, channels: int, reduction: bool,
                 ops: Sequence[str], per_edge: bool = True) -> None:
        super().__init__()
        self.banks = nn.ModuleList(
            OpBank(cell_type, node, slot, _bank_ops(ops, channels, stride, inputs, per_edge), ops, inputs, per_edge)
            for stride, inputs in _input_groups(node, reduction)
        )

    def active_bank(self) -> OpBank:
        return next(b for b in self.banks if b.live)

    def forward(self, states: Sequence[Tensor]) -> Tensor:
        out = None
        for bank in self.banks:
            # an inactive bank returns None at once; it is called so the cost table sees its input shape
            y = bank(states[bank.index if bank.live else bank.inputs[0]])
            out = y if y is not None else out
        return out


def _preprocess(c_pp: int, c_p: int, c: int, reduction_prev: bool) -> tuple[nn.Module, nn.Module]:
    pre0 = FactorizedReduce(c_pp, c) if reduction_prev else ReLUConvBN(c_pp, c, 1, 1, 0)
    return pre0, ReLUConvBN(c_p, c, 1, 1, 0)


class SearchCell(nn.Module):
    """A supernet cell: preprocessing of the two inputs, ``nodes`` nodes of two slots, concat of the nodes."""

    def __init__(self, reduction: bool, reduction_prev: bool, c_pp: int, c_p: int, c: int, nodes: int,
                 ops: Sequence[str], per_edge: bool = True) -> None:
        super().__init__()
        self.reduction = reduction
        self.pre0, self.pre1 = _preprocess(c_pp, c_p, c, reduction_prev)
        cell_type = CELL_TYPES[int(reduction)]
        self.nodes = nn.ModuleList(
            nn.ModuleList(InputSlot(cell_type, i, j, c, reduction, ops, per_edge) for j in range(2))
            for i in range(nodes)
        )

    def forward(self, s0: Tensor, s1: Tensor) -> Tensor:
        states = [self.pre0(s0), self.pre1(s1)]
        for slot0, slot1 in self.nodes:
            states.append(slot0(states) + slot1(states))
        return torch.cat(states[2:], dim=1)

    def freeze(self) -> DartsCell:
        banks = [slot.active_bank() for node in self.nodes for slot in node]
        return DartsCell(freeze_module(self.pre0), freeze_module(self.pre1), [b.freeze() for b in banks],
                         [b.index for b in banks], self.reduction)


class DartsCell(nn.Module):
    """An exported (genotype) cell: one fixed op per slot, drop-path on every op but the identity in training.

    Args:
        pre0: preprocessing of the cell before the previous one.
        pre1: preprocessing of the previous cell.
        ops: two ops per intermediate node, node by node.
        indices: the input of each op (0, 1: the cell inputs; ``k + 2``: node ``k``).
        reduction: whether the cell halves the resolution.
    """

    def __init__(self, pre0: nn.Module, pre1: nn.Module, ops: Sequence[nn.Module], indices: Sequence[int],
                 reduction: bool) -> None:
        super().__init__()
        self.pre0, self.pre1, self.ops = pre0, pre1, nn.ModuleList(ops)
        self.indices, self.reduction = [int(i) for i in indices], reduction

    def forward(self, s0: Tensor, s1: Tensor, drop_prob: float = 0.0) -> Tensor:
        states = [self.pre0(s0), self.pre1(s1)]
        for i in range(0, len(self.ops), 2):
            h = []
            for op, index in ((self.ops[i], self.indices[i]), (self.ops[i + 1], self.indices[i + 1])):
                x = op(states[index])
                if self.training and drop_prob > 0 and not isinstance(op, nn.Identity):
                    x = drop_path(x, drop_prob)
                h.append(x)
            states.append(h[0] + h[1])
        return torch.cat(states[2:], dim=1)


class DartsStem(nn.Module):
    """The stem, returning the two inputs of the first cell: one 3×3 conv (32/64 px), or ImageNet's two stems."""

    def __init__(self, channels: int, imagenet: bool, in_channels: int = 3) -> None:
        super().__init__()
        if not imagenet:
            self.stem0 = nn.Sequential(nn.Conv2d(in_channels, channels, 3, padding=1, bias=False),
                                       nn.BatchNorm2d(channels))
            self.stem1 = None
            return
        self.stem0 = nn.Sequential(
            nn.Conv2d(in_channels, channels // 2, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(channels // 2),
            nn.ReLU(inplace=False), nn.Conv2d(channels // 2, channels, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(channels),
        )
        self.stem1 = ReLUConvBN(channels, channels, 3, 2, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        s0 = self.stem0(x)
        return (s0, s0) if self.stem1 is None else (s0, self.stem1(s0))


class DartsNetwork(SubNetwork):
    """An exported DARTS network ("NetworkCIFAR" / "NetworkImageNet" of DARTS) for one arch.

    ``drop_path_prob`` (set it from a schedule while retraining) applies in training only. With an
    auxiliary head, a training forward returns ``(logits, aux_logits)``; eval returns the logits.
    """

    def __init__(self, stem: nn.Module, cells: nn.ModuleList, head: nn.Module, auxiliary: nn.Module | None,
                 aux_index: int, arch: Arch, space_name: str, drop_path_prob: float = 0.0) -> None:
        super().__init__(stem, cells, head, arch, space_name)
        self.auxiliary, self.aux_index, self.drop_path_prob = auxiliary, aux_index, drop_path_prob

    def _cells(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        s0, s1 = self.stem(x)
        aux = None
        for i, cell in enumerate(self.features):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == self.aux_index and self.auxiliary is not None and self.training:
                aux = self.auxiliary(s1)
        return s1, aux

    def forward_features(self, x: Tensor) -> Tensor:
        return self._cells(x)[0]

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        features, aux = self._cells(x)
        logits = self.head(features)
        return logits if aux is None else (logits, aux)


def _check_args(input_size: int, init_channels: int, layers: int, nodes: int, ops: Sequence[str],
                op_weights: str) -> None:
    if op_weights not in OP_WEIGHTS:
        raise ValueError(f"DartsCellSpace op_weights must be one of {OP_WEIGHTS}, got {op_weights!r}")
    bad = [o for o in ops if o not in OP_BUILDERS]
    if bad or not ops or len(set(ops)) != len(ops):
        raise ValueError(f"DartsCellSpace ops must be distinct names from {sorted(OP_BUILDERS)}; got {list(ops)}")
    if layers < 3 or nodes < 1:
        raise ValueError(f"DartsCellSpace needs layers >= 3 (normal and reduction cells) and nodes >= 1; "
                         f"got layers={layers}, nodes={nodes}")
    if init_channels < 2 or init_channels % 2:
        raise ValueError(f"DartsCellSpace needs an even init_channels (FactorizedReduce), got {init_channels}")
    step = 4 if input_size <= 64 else 32  # every reduction (and ImageNet's stems) must halve an even size
    if input_size < step or input_size % step:
        raise ValueError(f"DartsCellSpace input_size must be a multiple of {step} for this stem, got {input_size}")


class DartsCellSpace(SearchSpace):
    """The DARTS cell space: ``layers`` cells, reduction cells at 1/3 and 2/3 of the depth.

    Args:
        num_classes: classifier outputs.
        input_size: 32/64 (a 3×3 stride-1 stem of ``stem_multiplier × init_channels``) or 224 (ImageNet's two
            stride-2 stems of ``init_channels``).
        init_channels: channels of the first cells (DARTS: 16 searching, 36 retraining on CIFAR, 48 ImageNet).
        layers: number of cells.
        nodes: intermediate nodes per cell; a cell outputs their concatenation.
        ops: the candidate op names (see :data:`~lightning_nas.spaces.darts_ops.OP_BUILDERS`).
        include_none: add DARTS' ``none`` (zero) op to ``ops``.
        stem_multiplier: stem width over ``init_channels`` (32/64 px).
        auxiliary: exported networks get DARTS' auxiliary head on the 2/3-depth cell (training output).
        drop_path: the ``drop_path_prob`` of exported networks (training only).
        op_weights: ``"per_edge"`` (one op per (node, slot, input, op name): no weights shared between inputs,
            as DARTS' supernet) or ``"shared"`` (one op per (slot, op name), shared by the slot's inputs); see
            the module docstring.

    Raises:
        ValueError: unknown or repeated ops, fewer than 3 layers, an odd ``init_channels``, an input size
            the reductions cannot halve, or an unknown ``op_weights``.

    Example::

        space = DartsCellSpace(init_channels=4, layers=3, input_size=16)
        arch = space.sample(torch.Generator().manual_seed(0))
        net = space.export(arch)  # a plain DartsNetwork with the chosen weights
    """

    def __init__(self, num_classes: int = 10, input_size: int = 32, init_channels: int = 16, layers: int = 8,
                 nodes: int = 4, ops: Sequence[str] = DARTS_OPS, include_none: bool = False, stem_multiplier: int = 3,
                 auxiliary: bool = False, drop_path: float = 0.0, op_weights: str = "per_edge") -> None:
        super().__init__()
        ops = [*ops, NONE] if include_none and NONE not in ops else list(ops)
        _check_args(input_size, init_channels, layers, nodes, ops, op_weights)
        self.num_classes, self.input_size, self.ops, self.op_weights = num_classes, input_size, ops, op_weights
        self.auxiliary, self.drop_path = auxiliary, drop_path
        imagenet = input_size > 64
        c = init_channels
        stem_c = c if imagenet else stem_multiplier * c
        self.stem = DartsStem(stem_c, imagenet, self.in_channels)
        c_pp, c_p, reduction_prev = stem_c, stem_c, imagenet
        self.reductions = (layers // 3, 2 * layers // 3)
        self.aux_index, self.aux_channels = 2 * layers // 3, 0
        cells = []
        for i in range(layers):
            reduction = i in self.reductions
            c = c * 2 if reduction else c
            cells.append(SearchCell(reduction, reduction_prev, c_pp, c_p, c, nodes, ops, op_weights == "per_edge"))
            c_pp, c_p, reduction_prev = c_p, nodes * c, reduction
            if i == self.aux_index:
                self.aux_channels = c_p
        self.features = nn.ModuleList(cells)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(c_p, num_classes))

    def forward_features(self, x: Tensor) -> Tensor:
        s0, s1 = self.stem(x)
        for cell in self.features:
            s0, s1 = s1, cell(s0, s1)
        return s1

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.forward_features(x))

    def export(self, arch: Mapping[str, Any]) -> DartsNetwork:
        """A :class:`DartsNetwork` for ``arch`` with the supernet's chosen weights (a fresh auxiliary head)."""
        arch = self.validate(arch)
        previous = self.active_arch
        self.activate(arch, validate=False)
        try:
            cells = nn.ModuleList(cell.freeze() for cell in self.features)
            aux = AuxiliaryHead(self.aux_channels, self.num_classes) if self.auxiliary else None
            net = DartsNetwork(freeze_module(self.stem), cells, freeze_module(self.head), aux, self.aux_index, arch,
                               self.space_name, self.drop_path)
        finally:
            if previous is not None:
                self.activate(previous, validate=False)
        device = next(self.parameters()).device
        return net.to(device).train(self.training)

    def cost_units(self) -> list[tuple[str, nn.Module, list[str]]]:
        """One unit per op bank: every slot of every cell (two banks per slot past node 0 of a reduction cell)."""
        units: list[tuple[str, nn.Module, list[str]]] = []
        for c, cell in enumerate(self.features):
            for i, node in enumerate(cell.nodes):
                for j, slot in enumerate(node):
                    for b, bank in enumerate(slot.banks):
                        units.append((f"features.{c}.nodes.{i}.{j}.banks.{b}", bank, bank.cost_keys()))
        return units
