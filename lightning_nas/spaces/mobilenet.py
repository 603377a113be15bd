"""``MobileNetSpace``: the ProxylessNAS / MobileNetV2 space of MBConv blocks."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from lightning_nas.nn.choice import Choice
from lightning_nas.nn.layer_choice import LayerChoice
from lightning_nas.nn.quantize import FLOAT_BITS, BitChoice, QuantLinear
from lightning_nas.spaces.base import SearchSpace
from lightning_nas.spaces.blocks import Residual, ZeroOp, conv_bn, make_divisible, mbconv, parse_mbconv

__all__ = ["ZERO", "MBConvBlock", "MobileNetSpace"]

ZERO = "zero"
DEFAULT_CANDIDATES = ("k3_e3", "k3_e6", "k5_e3", "k5_e6", "k7_e3", "k7_e6")
FIXED_BITS = 8  # stem, first block and head when the space searches bit-widths (HAQ's convention)


class MBConvBlock(Choice):
    """A searchable MBConv block: a :class:`LayerChoice` of ops, plus an identity shortcut where shapes allow.

    When the active op is ``zero`` the block returns its input without running anything; exported,
    such a block is an ``nn.Identity``, any other a plain :class:`~lightning_nas.spaces.blocks.Residual`.

    Args:
        op: the candidate ops (``zero`` among them only if ``shortcut``).
        shortcut: add the input to the op's output (stride 1 and equal widths).
    """

    def __init__(self, op: LayerChoice, shortcut: bool) -> None:
        super().__init__()
        if ZERO in op.keys and not shortcut:
            raise ValueError(f"block {op.name!r}: a 'zero' candidate needs an identity shortcut")
        self.op, self.shortcut = op, shortcut

    def activate_choice(self, arch: Mapping[str, Any]) -> None:
        pass  # the LayerChoice child reads its own decision

    def forward(self, x: Tensor) -> Tensor:
        active = self.op.active
        if isinstance(active, str) and active == ZERO:  # a per-sample tensor setting runs the op
            return x
        out = self.op(x)
        return out + x if self.shortcut else out

    def freeze(self) -> nn.Module:
        if isinstance(self.op.active, str) and self.op.active == ZERO:
            return nn.Identity()
        return Residual(self.op.freeze(), self.shortcut)

    def extra_repr(self) -> str:
        return f"shortcut={self.shortcut}"


def _input_strides(input_size: int, stage_strides: Sequence[int]) -> tuple[int, tuple[int, ...]]:
    """The stem stride and stage strides for an input size (see :class:`MobileNetSpace`)."""
    strides = tuple(int(s) for s in stage_strides)
    if input_size <= 32:
        return 1, (1, *strides[1:])
    if input_size <= 64:
        return 1, strides
    return 2, strides


def _init_weights(module: nn.Module) -> None:
    """MobileNetV2's initialisation (torchvision, ProxylessNAS): He fan-out convs, N(0, 0.01) classifier."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


class MobileNetSpace(SearchSpace):
    """The ProxylessNAS search space: MobileNetV2-style stages of MBConv blocks, each block choosing its op.

    Stem 3×3 conv → BN → ReLU6; a fixed MBConv (expansion 1, 3×3) to ``first_block_channels``; the
    searchable stages; a 1×1 feature-mix conv to ``head_channels``, BN, ReLU6, global average pool,
    (dropout,) a linear classifier. Block ``i`` (0-based over the searchable blocks, input to output)
    owns the decision ``"blocks.{i}.op"``, whose values are ``candidates`` (``"k{kernel}_e{expand}"``)
    then ``"zero"`` where the block has stride 1 and equal input/output widths (it then has an
    identity shortcut; ``zero`` makes the block the identity). With ``bits`` each block also owns
    ``"blocks.{i}.wbits"`` and ``"blocks.{i}.abits"``, shared by its convs; the stem, first block and
    head are then fixed at 8 bits.

    Channel counts are ``make_divisible(c × width_mult, 8)``; ``head_channels`` is only scaled up
    (``width_mult > 1``), as in MobileNetV2 and ProxylessNAS. BatchNorm eps is 1e-3 (ProxylessNAS).

    Input sizes: above 64 px (ImageNet, 224) the stem has stride 2 and the stages ``stage_strides``
    (224 → 112 → 56 → 28 → 14 → 14 → 7 → 7). From 33 to 64 px (TinyImageNet) the stem has stride 1
    (64 → 64 → 32 → 16 → 8 → 8 → 4 → 4). Up to 32 px (CIFAR) the stem and the first stage have stride 1,
    the usual CIFAR MobileNetV2 convention (InstaNAS's too): 32 → 32 → 32 → 16 → 8 → 8 → 4 → 4. The
    ProxylessNAS release has no CIFAR version of this space (its CIFAR net is a PyramidNet-tree).

    Args:
        num_classes: classifier outputs.
        input_size: input height/width, which picks the strides (see above).
        width_mult: width multiplier of every layer (the head only when above 1).
        stem_channels: stem conv width.
        first_block_channels: output width of the fixed first MBConv.
        stage_channels: output width of each stage.
        stage_depths: blocks per stage.
        stage_strides: stride of each stage's first block.
        head_channels: feature-mix conv width.
        candidates: the ops every block chooses from, ``"k{kernel}_e{expand}"``.
        allow_zero: offer ``zero`` on blocks with an identity shortcut.
        bits: allowed bit-widths for a mixed-precision search (``None``: float, no bit decisions).
        dropout: dropout rate before the classifier.

    Example::

        space = MobileNetSpace(num_classes=10, input_size=32, width_mult=0.25, stage_depths=(1, 2, 2, 1, 1, 1))
        arch = space.sample(torch.Generator().manual_seed(0))
        net = space.export(arch)  # a plain network with the chosen ops' weights
    """

    def __init__(
        self, num_classes: int = 1000, input_size: int = 224, width_mult: float = 1.0, stem_channels: int = 32,
        first_block_channels: int = 16, stage_channels: Sequence[int] = (24, 40, 80, 96, 192, 320),
        stage_depths: Sequence[int] = (4, 4, 4, 4, 4, 1), stage_strides: Sequence[int] = (2, 2, 2, 1, 2, 1),
        head_channels: int = 1280, candidates: Sequence[str] = DEFAULT_CANDIDATES, allow_zero: bool = True,
        bits: Sequence[int] | None = None, dropout: float = 0.0,
    ) -> None:
        super().__init__()
        _check_args(stage_channels, stage_depths, stage_strides, candidates, bits)
        self._config = dict(
            num_classes=num_classes, input_size=input_size, width_mult=width_mult, stem_channels=stem_channels,
            first_block_channels=first_block_channels, stage_channels=list(stage_channels),
            stage_depths=list(stage_depths), stage_strides=list(stage_strides), head_channels=head_channels,
            candidates=list(candidates), allow_zero=allow_zero, bits=None if bits is None else list(bits),
            dropout=dropout,
        )
        self.num_classes, self.input_size = num_classes, input_size
        self.candidates, self.allow_zero = tuple(candidates), allow_zero
        self.bit_values = None if bits is None else tuple(int(b) for b in bits)
        self.stem_stride, self.strides = _input_strides(input_size, stage_strides)
        fixed = FIXED_BITS if bits is not None else None

        stem_ch = make_divisible(stem_channels * width_mult)
        first_ch = make_divisible(first_block_channels * width_mult)
        self.stem = nn.Sequential(OrderedDict(
            conv=conv_bn(self.in_channels, stem_ch, 3, self.stem_stride, fixed_bits=fixed, act_signed=True),
            block=mbconv(stem_ch, first_ch, 3, 1, 1, fixed_bits=fixed, input_signed=False),
        ))
        self.features = nn.Sequential(*self._blocks(first_ch, width_mult, stage_channels, stage_depths))
        last_ch = make_divisible(stage_channels[-1] * width_mult)
        head_ch = make_divisible(head_channels * width_mult) if width_mult > 1.0 else head_channels
        self.head = self._head(last_ch, head_ch, num_classes, dropout, fixed)
        _init_weights(self)

    def _blocks(
        self, in_ch: int, width_mult: float, stage_channels: Sequence[int], stage_depths: Sequence[int],
    ) -> list[MBConvBlock]:
        blocks = []
        for width, depth, stage_stride in zip(stage_channels, stage_depths, self.strides):
            out_ch = make_divisible(width * width_mult)
            for j in range(depth):
                stride = stage_stride if j == 0 else 1
                blocks.append(self._block(len(blocks), in_ch, out_ch, stride))
                in_ch = out_ch
        return blocks

    def _block(self, index: int, in_ch: int, out_ch: int, stride: int) -> MBConvBlock:
        bits = None
        if self.bit_values is not None:
            bits = BitChoice(f"blocks.{index}.wbits", f"blocks.{index}.abits", self.bit_values)
        ops: dict[str, nn.Module] = {}
        for name in self.candidates:
            kernel, expand = parse_mbconv(name)
            ops[name] = mbconv(in_ch, out_ch, kernel, expand, stride, bits=bits, input_signed=True)
        shortcut = stride == 1 and in_ch == out_ch
        if shortcut and self.allow_zero:
            ops[ZERO] = ZeroOp()
        return MBConvBlock(LayerChoice(ops, f"blocks.{index}.op"), shortcut)

    @staticmethod
    def _head(in_ch: int, head_ch: int, num_classes: int, dropout: float, fixed: int | None) -> nn.Sequential:
        layers: list[tuple[str, nn.Module]] = [
            ("mix", conv_bn(in_ch, head_ch, 1, fixed_bits=fixed, act_signed=False)),
            ("pool", nn.AdaptiveAvgPool2d(1)),
            ("flatten", nn.Flatten(1)),
        ]
        if dropout > 0:
            layers.append(("dropout", nn.Dropout(dropout)))
        if fixed is None:
            layers.append(("classifier", nn.Linear(head_ch, num_classes)))
        else:
            layers.append(("classifier", QuantLinear(head_ch, num_classes, wbits=fixed, abits=fixed)))
        return nn.Sequential(OrderedDict(layers))

    @property
    def num_blocks(self) -> int:
        """The number of searchable blocks."""
        return len(self.features)


def _check_args(
    stage_channels: Sequence[int], stage_depths: Sequence[int], stage_strides: Sequence[int],
    candidates: Sequence[str], bits: Sequence[int] | None,
) -> None:
    if not len(stage_channels) == len(stage_depths) == len(stage_strides) or not stage_channels:
        raise ValueError(
            f"MobileNetSpace: give one width, depth and stride per stage; got {len(stage_channels)} widths, "
            f"{len(stage_depths)} depths and {len(stage_strides)} strides."
        )
    if any(d < 1 for d in stage_depths) or any(s not in (1, 2) for s in stage_strides):
        raise ValueError(
            f"MobileNetSpace: depths must be >= 1 and strides 1 or 2, got {list(stage_depths)}, {list(stage_strides)}."
        )
    if not candidates or len(set(candidates)) != len(candidates) or ZERO in candidates:
        raise ValueError(f"MobileNetSpace: candidates must be distinct 'k{{K}}_e{{E}}' names (zero is added by "
                         f"allow_zero), got {list(candidates)}.")
    for name in candidates:
        parse_mbconv(name)
    if bits is not None and (not bits or any(not 2 <= b <= FLOAT_BITS for b in bits)):
        raise ValueError(f"MobileNetSpace: bits must be in 2..{FLOAT_BITS} ({FLOAT_BITS}: float), got {list(bits)}.")
