"""``ShuffleNetSpace``: the SPOS supernet of ShuffleNetV2 choice blocks.

Guo et al., "Single Path One-Shot Neural Architecture Search with Uniform Sampling", ECCV 2020,
https://arxiv.org/abs/1904.00420 (official code: megvii-model/SinglePathOneShot).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_nas.nn import BitChoice, ChannelChoice, DynamicBatchNorm2d, DynamicConv2d, LayerChoice
from lightning_nas.nn.quantize import QuantConv2d, QuantLinear
from lightning_nas.spaces.base import SearchSpace

__all__ = ["OPS", "ShuffleCandidate", "ShuffleNetSpace", "ShuffleUnit", "channel_split"]

OPS = ("shuffle3x3", "shuffle5x5", "shuffle7x7", "xception")
_KERNELS = {"shuffle3x3": 3, "shuffle5x5": 5, "shuffle7x7": 7, "xception": 3}
FIXED_BITS = 8  # stem, head and classifier precision when bit-widths are searched


def channel_split(x: Tensor) -> tuple[Tensor, Tensor]:
    """ShuffleNetV2's channel shuffle + split: even channels pass through, odd ones feed the branch."""
    b, c, h, w = x.shape
    x = x.reshape(b, c // 2, 2, h, w)
    return x[:, :, 0], x[:, :, 1]


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round ``value`` to the nearest multiple of ``divisor`` (at least ``divisor``, and not 10% below ``value``)."""
    out = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return out + divisor if out < 0.9 * value else out


class ShuffleCandidate(nn.Module):
    """One candidate of a choice block: the branch, plus the projection branch in a stage's first block.

    The input is the branch half of a shuffled unit (no projection), or the whole unit input
    (projection): then the output is ``cat(proj(x), main(x))``.
    """

    def __init__(self, main: nn.Module, proj: nn.Module | None = None) -> None:
        super().__init__()
        self.main = main  # registered first: its first conv declares the block's width before its bits
        self.proj = proj

    def forward(self, x: Tensor) -> Tensor:
        if self.proj is None:
            return self.main(x)
        return torch.cat((self.proj(x), self.main(x)), 1)


class ShuffleUnit(nn.Module):
    """A ShuffleNetV2 unit around one op: shuffle/split and concat, or (``project``) the op sees all of ``x``."""

    def __init__(self, op: nn.Module, project: bool) -> None:
        super().__init__()
        self.op, self.project = op, project

    def forward(self, x: Tensor) -> Tensor:
        if self.project:
            return self.op(x)
        x_proj, x_main = channel_split(x)
        return torch.cat((x_proj, self.op(x_main)), 1)


class _BlockBuilder:
    """Builds the convs of one choice block; all candidates share its width and bit decisions."""

    def __init__(self, width: ChannelChoice | None, bits: BitChoice | None) -> None:
        self.width, self.bits = width, bits

    def conv_bn(
        self, cin: int, cout: int, k: int, stride: int = 1, *, depthwise: bool = False, relu: bool = False,
        in_dyn: bool = False, out_dyn: bool = False, signed: bool = False,
    ) -> list[nn.Module]:
        in_width = self.width if in_dyn else None
        out_width = self.width if out_dyn else None
        quant: dict[str, Any] = {"bits": self.bits, "act_signed": signed} if self.bits is not None else {}
        conv = DynamicConv2d(cin, cout, k, stride, depthwise=depthwise, in_width=in_width, out_width=out_width,
                             **quant)
        bn: nn.Module = DynamicBatchNorm2d(cout, out_width) if out_width is not None else nn.BatchNorm2d(
            cout, affine=False)
        return [conv, bn, nn.ReLU(inplace=True)] if relu else [conv, bn]

    def shuffle(self, cin: int, cout: int, mid: int, k: int, stride: int) -> nn.Sequential:
        """pw cin→mid, BN, ReLU; dw k×k, BN; pw mid→cout, BN, ReLU."""
        dyn = self.width is not None
        return nn.Sequential(
            *self.conv_bn(cin, mid, 1, relu=True, out_dyn=dyn),
            *self.conv_bn(mid, mid, k, stride, depthwise=True, in_dyn=dyn, out_dyn=dyn),
            *self.conv_bn(mid, cout, 1, relu=True, in_dyn=dyn, signed=True),
        )

    def xception(self, cin: int, cout: int, mid: int, stride: int) -> nn.Sequential:
        """Three rounds of dw 3×3, BN, pw, BN, ReLU (stride on the first dw)."""
        dyn = self.width is not None
        return nn.Sequential(
            *self.conv_bn(cin, cin, 3, stride, depthwise=True),
            *self.conv_bn(cin, mid, 1, relu=True, out_dyn=dyn, signed=True),
            *self.conv_bn(mid, mid, 3, depthwise=True, in_dyn=dyn, out_dyn=dyn),
            *self.conv_bn(mid, mid, 1, relu=True, in_dyn=dyn, out_dyn=dyn, signed=True),
            *self.conv_bn(mid, mid, 3, depthwise=True, in_dyn=dyn, out_dyn=dyn),
            *self.conv_bn(mid, cout, 1, relu=True, in_dyn=dyn, signed=True),
        )

    def proj(self, cin: int, k: int, stride: int) -> nn.Sequential:
        """The projection branch of a stage's first block: dw k×k, BN, pw, BN, ReLU."""
        return nn.Sequential(
            *self.conv_bn(cin, cin, k, stride, depthwise=True),
            *self.conv_bn(cin, cin, 1, relu=True, signed=True),
        )

    def candidate(self, op: str, cin: int, cout: int, mid: int, stride: int, project: bool) -> ShuffleCandidate:
        k = _KERNELS[op]
        branch_out = cout - cin if project else cout // 2
        branch_in = cin if project else cin // 2
        if op == "xception":
            main = self.xception(branch_in, branch_out, mid, stride)
        else:
            main = self.shuffle(branch_in, branch_out, mid, k, stride)
        return ShuffleCandidate(main, self.proj(cin, k, stride) if project else None)


class ShuffleNetSpace(SearchSpace):
    """The SPOS supernet: a ShuffleNetV2 backbone whose every unit chooses its branch (and width, bits).

    Stem 3×3 conv → 16, BN, ReLU; stages of 4/4/8/4 choice blocks of widths 64/160/320/640, the
    first block of a stage projecting (both branches see the whole input, the main branch
    outputs ``out − in`` channels) and the others shuffling (half the channels pass through);
    head 1×1 conv → 1024, BN, ReLU, global average pool, dropout, linear without bias. Supernet
    BatchNorm has no affine parameters; ``export`` gives affine BatchNorm for retraining.

    Candidates per block (decision ``stage{s}.{b}.op``, ``s`` 1-based, ``b`` 0-based in the
    stage): ``shuffle3x3``/``shuffle5x5``/``shuffle7x7`` (pw → mid, dw k×k, pw → out) and
    ``xception`` (three dw 3×3 + pw rounds), each with its own projection branch in a stage's
    first block, as in the official code. Their middle width is ``int(out / 2 × scale)`` with
    ``scale`` 1, or with ``channel_search`` the decision ``stage{s}.{b}.width`` over
    ``width_scales``, shared by the block's four candidates (each keeps one max-width weight).
    With ``bits``, every conv of a block follows ``stage{s}.{b}.wbits`` and ``stage{s}.{b}.abits``;
    the stem, head conv and classifier then stay at fixed 8-bit weights and activations.

    Input sizes: the downsampling adapts so the last feature map stays small but not degenerate:

    - ``input_size >= 128`` (ImageNet, 224): stem stride 2, every stage stride 2 (224 → 112 → 56 → 28 → 14 → 7);
    - ``64 <= input_size < 128`` (TinyImageNet, 64): stem stride 1 (64 → 64 → 32 → 16 → 8 → 4);
    - ``input_size < 64`` (CIFAR, 32): stem and first stage stride 1 (32 → 32 → 32 → 16 → 8 → 4).

    Args:
        num_classes: classifier outputs.
        input_size: input height/width; picks the strides above.
        width_mult: scales the stem, stage and head widths (each rounded to a multiple of 8, at least 8).
        stage_depths: choice blocks per stage.
        stage_channels: output width of each stage.
        stem_channels: stem width.
        head_channels: width of the 1×1 conv before pooling.
        channel_search: search the middle width of every block over ``width_scales``.
        width_scales: the middle-width scales (of ``out / 2``) for channel search.
        bits: searched weight/activation bit-widths per block (``None``: float).
        dropout: dropout before the classifier.

    Example::

        space = ShuffleNetSpace(num_classes=10, input_size=32, width_mult=0.25, stage_depths=(1, 1, 2, 1))
        arch = space.sample(torch.Generator().manual_seed(0))
        space.activate(arch)
        net = space.export(arch)  # a plain nn.Module
    """

    def __init__(
        self, num_classes: int = 1000, input_size: int = 224, width_mult: float = 1.0,
        stage_depths: Sequence[int] = (4, 4, 8, 4), stage_channels: Sequence[int] = (64, 160, 320, 640),
        stem_channels: int = 16, head_channels: int = 1024, channel_search: bool = False,
        width_scales: Sequence[float] = (0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4, 1.6), bits: Sequence[int] | None = None,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if len(stage_depths) != len(stage_channels) or not stage_depths:
            raise ValueError(f"give one depth per stage: stage_depths={stage_depths}, stage_channels={stage_channels}")
        self._config = {
            "num_classes": num_classes, "input_size": input_size, "width_mult": width_mult,
            "stage_depths": list(stage_depths), "stage_channels": list(stage_channels),
            "stem_channels": stem_channels, "head_channels": head_channels, "channel_search": channel_search,
            "width_scales": list(width_scales), "bits": list(bits) if bits is not None else None, "dropout": dropout,
        }
        self.num_classes, self.input_size = num_classes, input_size
        self.channel_search, self.width_scales = channel_search, tuple(width_scales)
        self.bits = tuple(int(b) for b in bits) if bits is not None else None
        stem_c = make_divisible(stem_channels * width_mult)
        widths = [make_divisible(c * width_mult) for c in stage_channels]
        head_c = make_divisible(head_channels * width_mult)
        stem_stride, first_stride = self.strides_for(input_size)
        fixed = {"wbits": FIXED_BITS, "abits": FIXED_BITS} if self.bits is not None else {}
        self.stem = nn.Sequential(
            QuantConv2d(3, stem_c, 3, stem_stride, 1, bias=False, act_signed=True, **fixed),
            nn.BatchNorm2d(stem_c, affine=False), nn.ReLU(inplace=True),
        )
        self.features = self._build_features(stem_c, widths, stage_depths, first_stride)
        self.head = nn.Sequential(
            QuantConv2d(widths[-1], head_c, 1, bias=False, **fixed), nn.BatchNorm2d(head_c, affine=False),
            nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Dropout(dropout),
            QuantLinear(head_c, num_classes, bias=False, **fixed),
        )
        self._init_weights()

    @staticmethod
    def strides_for(input_size: int) -> tuple[int, int]:
        """``(stem stride, first stage's stride)`` for an input size; later stages always stride 2."""
        if input_size >= 128:
            return 2, 2
        return (1, 2) if input_size >= 64 else (1, 1)

    def _build_features(self, cin: int, widths: list[int], depths: Sequence[int], first_stride: int) -> nn.Sequential:
        units: list[nn.Module] = []
        for s, (cout, depth) in enumerate(zip(widths, depths, strict=True), start=1):
            if cout <= cin:
                raise ValueError(f"stage {s} must widen its input ({cin} → {cout} channels): the main branch "
                                 f"of its first block outputs out − in channels")
            for b in range(depth):
                stride = (first_stride if s == 1 else 2) if b == 0 else 1
                units.append(self._build_unit(f"stage{s}.{b}", cin, cout, stride, project=b == 0))
                cin = cout
        return nn.Sequential(*units)

    def _build_unit(self, prefix: str, cin: int, cout: int, stride: int, project: bool) -> ShuffleUnit:
        base_mid = cout // 2
        scales = self.width_scales if self.channel_search else (1.0,)
        mids = tuple(max(1, int(base_mid * sc)) for sc in scales)  # the official int(out // 2 * scale)
        width = ChannelChoice(f"{prefix}.width", scales, mids) if self.channel_search else None
        bits = BitChoice(f"{prefix}.wbits", f"{prefix}.abits", self.bits) if self.bits is not None else None
        builder = _BlockBuilder(width, bits)
        candidates = {op: builder.candidate(op, cin, cout, max(mids), stride, project) for op in OPS}
        return ShuffleUnit(LayerChoice(candidates, f"{prefix}.op"), project)

    def _init_weights(self) -> None:
        # The official initialisation: N(0, 1/fan-in-channels) convs, N(0, 0.01) stem conv and classifier.
        for name, m in self.named_modules():
            if isinstance(m, nn.Conv2d):
                std = 0.01 if name.startswith("stem") else 1.0 / m.weight.shape[1]
                nn.init.normal_(m.weight, 0.0, std)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
