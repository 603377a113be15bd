"""MBConv building blocks shared by the MobileNet-style spaces (ProxylessNAS, InstaNAS).

``mbconv`` builds one inverted-residual op (no shortcut: the block that holds it adds it), as
MobileNetV2 and ProxylessNAS define it: pw expand (omitted when the expansion is 1), BN, ReLU6;
depthwise k×k with the stride, BN, ReLU6; pw linear projection, BN.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn

from lightning_nas.nn.quantize import FLOAT_BITS, BitChoice, QuantConv2d

__all__ = ["BN_EPS", "BN_MOMENTUM", "Residual", "ZeroOp", "conv_bn", "make_divisible", "mbconv", "parse_mbconv"]

BN_EPS = 1e-3  # ProxylessNAS's released nets and super net
BN_MOMENTUM = 0.1


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``value`` to a multiple of ``divisor``, never more than 10% down (MobileNetV2's rule)."""
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def parse_mbconv(name: str) -> tuple[int, int]:
    """``"k5_e3"`` → ``(5, 3)`` (kernel, expansion).

    Raises:
        ValueError: the name is not ``k{kernel}_e{expand}``.
    """
    kernel, _, expand = name.partition("_")
    if not (kernel[:1] == "k" and expand[:1] == "e" and kernel[1:].isdigit() and expand[1:].isdigit()):
        raise ValueError(f"MBConv candidate names look like 'k3_e6' (kernel 3, expansion 6), got {name!r}.")
    return int(kernel[1:]), int(expand[1:])


def _conv(
    in_ch: int, out_ch: int, kernel: int, stride: int, groups: int, bits: BitChoice | None, fixed_bits: int | None,
    act_signed: bool,
) -> nn.Conv2d:
    args = (in_ch, out_ch, kernel, stride, (kernel - 1) // 2)
    if bits is None and fixed_bits is None:
        return nn.Conv2d(*args, groups=groups, bias=False)
    wbits = abits = fixed_bits if fixed_bits is not None else FLOAT_BITS
    return QuantConv2d(*args, groups=groups, bias=False, wbits=wbits, abits=abits, act_signed=act_signed, bits=bits)


def conv_bn(
    in_ch: int, out_ch: int, kernel: int = 1, stride: int = 1, groups: int = 1, act: bool = True, *,
    bits: BitChoice | None = None, fixed_bits: int | None = None, act_signed: bool = False,
    bn_eps: float = BN_EPS, bn_momentum: float = BN_MOMENTUM,
) -> nn.Sequential:
    """Conv (no bias, "same" padding), BatchNorm and optionally ReLU6.

    Args:
        in_ch: input channels.
        out_ch: output channels.
        kernel: square kernel size.
        stride: stride.
        groups: conv groups (``in_ch`` for depthwise).
        act: append ReLU6.
        bits: bit-width decisions for a quantized conv (mixed-precision search).
        fixed_bits: a fixed weight/activation bit-width (e.g. 8 for a stem kept at 8 bits).
        act_signed: whether the conv's input can be negative (quantized convs only).
        bn_eps: BatchNorm epsilon.
        bn_momentum: BatchNorm momentum.
    """
    layers: list[tuple[str, nn.Module]] = [
        ("conv", _conv(in_ch, out_ch, kernel, stride, groups, bits, fixed_bits, act_signed)),
        ("bn", nn.BatchNorm2d(out_ch, eps=bn_eps, momentum=bn_momentum)),
    ]
    if act:
        layers.append(("act", nn.ReLU6(inplace=True)))
    return nn.Sequential(OrderedDict(layers))


def mbconv(
    in_ch: int, out_ch: int, kernel: int, expand: int, stride: int = 1, *, bits: BitChoice | None = None,
    fixed_bits: int | None = None, input_signed: bool = True, bn_eps: float = BN_EPS,
    bn_momentum: float = BN_MOMENTUM,
) -> nn.Sequential:
    """One MBConv op without its shortcut: ``[expand] → depthwise → project``.

    The hidden width is ``round(in_ch × expand)`` as in ProxylessNAS and torchvision's MobileNetV2.

    Args:
        in_ch: input channels.
        out_ch: output channels.
        kernel: depthwise kernel size.
        expand: expansion ratio (1: no expand conv).
        stride: depthwise stride.
        bits: bit-width decisions shared by the op's three convs.
        fixed_bits: a fixed bit-width for the op's convs instead.
        input_signed: whether the op's input can be negative (after a linear projection it can).
        bn_eps: BatchNorm epsilon.
        bn_momentum: BatchNorm momentum.

    Example::

        op = mbconv(24, 40, kernel=5, expand=3, stride=2)
    """
    hidden = int(round(in_ch * expand))
    q = dict(bits=bits, fixed_bits=fixed_bits, bn_eps=bn_eps, bn_momentum=bn_momentum)
    layers: list[tuple[str, nn.Module]] = []
    if expand != 1:
        layers.append(("expand", conv_bn(in_ch, hidden, 1, act_signed=input_signed, **q)))
    dw_signed = input_signed and expand == 1
    layers.append(("depthwise", conv_bn(hidden, hidden, kernel, stride, groups=hidden, act_signed=dw_signed, **q)))
    layers.append(("project", conv_bn(hidden, out_ch, 1, act=False, act_signed=False, **q)))
    return nn.Sequential(OrderedDict(layers))


class ZeroOp(nn.Module):
    """The ``zero`` candidate: outputs zeros, so its block (which has a shortcut) passes its input through.

    A single-path block never calls it (it returns its input directly); it runs only when a
    per-sample setting (InstaNAS) sends some samples to ``zero``.
    """

    def forward(self, x: Tensor) -> Tensor:
        return torch.zeros_like(x)


class Residual(nn.Module):
    """A fixed op with an optional identity shortcut: ``op(x) + x`` or ``op(x)`` (an exported MBConv block)."""

    def __init__(self, op: nn.Module, shortcut: bool) -> None:
        super().__init__()
        self.op, self.shortcut = op, shortcut

    def forward(self, x: Tensor) -> Tensor:
        out = self.op(x)
        return out + x if self.shortcut else out

    def extra_repr(self) -> str:
        return f"shortcut={self.shortcut}"
