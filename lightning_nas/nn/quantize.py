"""Fake quantization with straight-through gradients, and quantized conv/linear layers.

Weights: symmetric linear, ``scale = max|w| / (2^(b-1) - 1)`` per output channel (or per tensor).
Activations: unsigned after a ReLU (``2^b - 1`` levels on ``[0, max]``) or signed, with the range
tracked as an exponential moving average of the batch maximum while training. 32 bits = float.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_nas.nn.choice import Choice

FLOAT_BITS = 32


@dataclass(frozen=True)
class BitChoice:
    """Weight and activation bit-width decisions shared by every layer that names them.

    Args:
        weight_name: the weight-bits decision's name (``"stage1.0.wbits"``).
        act_name: the activation-bits decision's name (``"stage1.0.abits"``).
        weight_values: the allowed weight bit-widths.
        act_values: the allowed activation bit-widths (default: the weight ones).
    """

    weight_name: str
    act_name: str
    weight_values: tuple[int, ...] = (2, 4, 6, 8)
    act_values: tuple[int, ...] | None = None

    def decisions(self) -> dict[str, list[int]]:
        return {self.weight_name: list(self.weight_values), self.act_name: list(self.act_values or self.weight_values)}


def _check_bits(bits: int) -> None:
    if bits < 2:
        raise ValueError(f"bit-width must be at least 2 (or {FLOAT_BITS} for float), got {bits}")


def quantize_weight(w: Tensor, bits: int, per_channel: bool = True) -> Tensor:
    """Symmetric linear fake quantization of a weight, straight-through gradient."""
    if bits >= FLOAT_BITS:
        return w
    _check_bits(bits)
    levels = 2 ** (bits - 1) - 1
    ref = w.detach().abs()
    thr = ref.flatten(1).amax(1).view(-1, *([1] * (w.dim() - 1))) if per_channel and w.dim() > 1 else ref.max()
    scale = thr.clamp_min(1e-8) / levels
    q = torch.round(w.detach() / scale).clamp_(-levels, levels).mul_(scale)
    return w + (q - w).detach()


def quantize_activation(x: Tensor, bits: int, max_val: Tensor, signed: bool = False) -> Tensor:
    """Linear fake quantization of an activation on ``[0, max]`` (or ``[-max, max]``), straight-through."""
    if bits >= FLOAT_BITS:
        return x
    _check_bits(bits)
    levels = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
    scale = max_val.clamp_min(1e-8) / levels
    q = torch.round(x.detach() / scale).clamp_(-levels if signed else 0, levels).mul_(scale)
    return x + (q - x).detach()


class _QuantMixin(Choice):
    """Bit-width state shared by the quantized conv and linear layers."""

    wbits: int
    abits: int

    def _init_quant(self, wbits: int, abits: int, act_signed: bool, per_channel: bool, bits: BitChoice | None) -> None:
        self.wbits, self.abits, self.bits = wbits, abits, bits
        self.act_signed, self.per_channel = act_signed, per_channel
        self.act_momentum = 0.1
        self.register_buffer("act_max", torch.zeros(()))

    @property
    def quantized(self) -> bool:
        return self.wbits < FLOAT_BITS or self.abits < FLOAT_BITS

    def _quant_decisions(self) -> dict[str, list[Any]]:
        return self.bits.decisions() if self.bits is not None else {}

    def _activate_bits(self, arch: Mapping[str, Any]) -> None:
        if self.bits is not None:
            self.wbits = int(arch[self.bits.weight_name])
            self.abits = int(arch[self.bits.act_name])

    def _quant_input(self, x: Tensor) -> Tensor:
        if self.abits >= FLOAT_BITS:
            return x
        if self.training:
            with torch.no_grad():
                batch_max = x.detach().abs().max() if self.act_signed else x.detach().max().clamp_min(0)
                ema = self.act_max * (1 - self.act_momentum) + batch_max * self.act_momentum
                self.act_max.copy_(torch.where(self.act_max > 0, ema, batch_max))
        return quantize_activation(x, self.abits, self.act_max, self.act_signed)

    def _quant_weight(self, w: Tensor) -> Tensor:
        return quantize_weight(w, self.wbits, self.per_channel)

    def _copy_quant_state(self, other: _QuantMixin) -> None:
        other.wbits, other.abits, other.act_signed, other.per_channel = (
            self.wbits, self.abits, self.act_signed, self.per_channel,
        )
        other.act_max.copy_(self.act_max)


class QuantConv2d(nn.Conv2d, _QuantMixin):
    """A ``Conv2d`` with fake-quantized weights (``wbits``) and inputs (``abits``); 32 bits = float.

    Args:
        *args: as ``nn.Conv2d``.
        wbits: weight bit-width.
        abits: input activation bit-width.
        act_signed: whether the input can be negative (no ReLU before it).
        per_channel: one weight scale per output channel instead of one per tensor.
        bits: a :class:`BitChoice` whose decisions set ``wbits``/``abits`` (mixed-precision search).
        **kwargs: as ``nn.Conv2d``.
    """

    def __init__(
        self, *args: Any, wbits: int = FLOAT_BITS, abits: int = FLOAT_BITS, act_signed: bool = False,
        per_channel: bool = True, bits: BitChoice | None = None, **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._init_quant(wbits, abits, act_signed, per_channel, bits)

    def choice_decisions(self) -> dict[str, list[Any]]:
        return self._quant_decisions()

    def activate_choice(self, arch: Mapping[str, Any]) -> None:
        self._activate_bits(arch)

    def forward(self, x: Tensor) -> Tensor:
        if not self.quantized:
            return self._conv_forward(x, self.weight, self.bias)
        return self._conv_forward(self._quant_input(x), self._quant_weight(self.weight), self.bias)

    def freeze(self) -> nn.Module:
        return _frozen_conv(self, self.weight, self.bias, self.groups)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, **quant: Any) -> QuantConv2d:
        """Wrap a trained ``nn.Conv2d`` (weights shared, not copied) as a quantized conv."""
        q = cls(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
            conv.groups, conv.bias is not None, conv.padding_mode, **quant,
        ).to(conv.weight.device)
        q.weight, q.bias = conv.weight, conv.bias
        return q


class QuantLinear(nn.Linear, _QuantMixin):
    """A ``Linear`` with fake-quantized weights and inputs; arguments as :class:`QuantConv2d`."""

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, *, wbits: int = FLOAT_BITS,
        abits: int = FLOAT_BITS, act_signed: bool = False, per_channel: bool = True, bits: BitChoice | None = None,
    ) -> None:
        super().__init__(in_features, out_features, bias)
        self._init_quant(wbits, abits, act_signed, per_channel, bits)

    def choice_decisions(self) -> dict[str, list[Any]]:
        return self._quant_decisions()

    def activate_choice(self, arch: Mapping[str, Any]) -> None:
        self._activate_bits(arch)

    def forward(self, x: Tensor) -> Tensor:
        if not self.quantized:
            return F.linear(x, self.weight, self.bias)
        return F.linear(self._quant_input(x), self._quant_weight(self.weight), self.bias)

    def freeze(self) -> nn.Module:
        return _frozen_linear(self, self.weight, self.bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear, **quant: Any) -> QuantLinear:
        """Wrap a trained ``nn.Linear`` (weights shared, not copied) as a quantized linear layer."""
        q = cls(linear.in_features, linear.out_features, linear.bias is not None, **quant).to(linear.weight.device)
        q.weight, q.bias = linear.weight, linear.bias
        return q


def _frozen_conv(src: QuantConv2d, weight: Tensor, bias: Tensor | None, groups: int) -> nn.Conv2d:
    """A plain conv (or a fixed-bit ``QuantConv2d``) holding copies of ``weight``/``bias``."""
    out_c, in_per_group = weight.shape[:2]
    kwargs = dict(stride=src.stride, padding=src.padding, dilation=src.dilation, groups=groups, bias=bias is not None)
    if src.quantized:
        conv: nn.Conv2d = QuantConv2d(in_per_group * groups, out_c, src.kernel_size, **kwargs)
        src._copy_quant_state(conv)  # type: ignore[arg-type]
    else:
        conv = nn.Conv2d(in_per_group * groups, out_c, src.kernel_size, **kwargs)
    conv = conv.to(weight.device)
    conv.weight.data.copy_(weight.detach())
    if bias is not None:
        conv.bias.data.copy_(bias.detach())
    return conv


def _frozen_linear(src: QuantLinear, weight: Tensor, bias: Tensor | None) -> nn.Linear:
    out_f, in_f = weight.shape
    if src.quantized:
        lin: nn.Linear = QuantLinear(in_f, out_f, bias is not None)
        src._copy_quant_state(lin)  # type: ignore[arg-type]
    else:
        lin = nn.Linear(in_f, out_f, bias is not None)
    lin = lin.to(weight.device)
    lin.weight.data.copy_(weight.detach())
    if bias is not None:
        lin.bias.data.copy_(bias.detach())
    return lin
