"""Dynamic-width ops: one max-width weight, sliced to the chosen width at run time.

The slices are views of the max-width parameters (no copies on the forward path); gradients reach
only the sliced part. ``freeze()`` materialises the slice as a plain layer. Every op knows its
active input and output widths from the arch alone, so export and cost tables need no forward.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from lightning_nas.nn.choice import Choice, affine_batchnorm
from lightning_nas.nn.quantize import QuantConv2d, QuantLinear, _frozen_conv, _frozen_linear


@dataclass(frozen=True)
class ChannelChoice:
    """A width decision: its values (e.g. scales ``0.2 … 1.6``) and the channel count of each.

    Args:
        name: the decision's name (``"stage1.0.width"``); ops naming it share the decision.
        values: the decision's values.
        channels: the channel count for each value, in the same order.
    """

    name: str
    values: tuple[Any, ...]
    channels: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.values) != len(self.channels) or not self.values:
            raise ValueError(f"ChannelChoice {self.name!r}: give one channel count per value.")

    @property
    def max_channels(self) -> int:
        return max(self.channels)

    def channels_for(self, value: Any) -> int:
        return self.channels[self.values.index(value)]


def _width_decisions(*widths: ChannelChoice | None) -> dict[str, list[Any]]:
    return {w.name: list(w.values) for w in widths if w is not None}


class DynamicConv2d(QuantConv2d):
    """A conv whose input/output widths follow :class:`ChannelChoice` decisions (and bits a :class:`BitChoice`).

    Args:
        in_channels: the maximum input width.
        out_channels: the maximum output width.
        kernel_size: square kernel size.
        stride: stride.
        dilation: dilation; padding keeps the size (``dilation * (k - 1) // 2``).
        depthwise: one filter per channel (``groups`` = active channels; ``in_width`` and ``out_width`` must agree).
        bias: whether the conv has a bias.
        in_width: the decision the input width follows (``None``: always the maximum).
        out_width: the decision the output width follows.
        **quant: ``wbits``, ``abits``, ``act_signed``, ``per_channel``, ``bits`` as :class:`QuantConv2d`.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, dilation: int = 1,
        depthwise: bool = False, bias: bool = False, in_width: ChannelChoice | None = None,
        out_width: ChannelChoice | None = None, **quant: Any,
    ) -> None:
        groups = in_channels if depthwise else 1
        if depthwise and (in_channels != out_channels or in_width != out_width):
            raise ValueError("a depthwise DynamicConv2d needs equal in/out channels and the same width decision")
        padding = dilation * (kernel_size - 1) // 2
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, **quant)
        self.depthwise, self.in_width, self.out_width = depthwise, in_width, out_width
        self.active_in, self.active_out = in_channels, out_channels

    def choice_decisions(self) -> dict[str, list[Any]]:
        return {**_width_decisions(self.in_width, self.out_width), **self._quant_decisions()}

    def activate_choice(self, arch: Mapping[str, Any]) -> None:
        if self.in_width is not None:
            self.active_in = self.in_width.channels_for(arch[self.in_width.name])
        if self.out_width is not None:
            self.active_out = self.out_width.channels_for(arch[self.out_width.name])
        self._activate_bits(arch)

    def _active_weight(self) -> tuple[Tensor, Tensor | None, int]:
        w, b = self.weight, self.bias
        if self.active_out != self.out_channels:
            w = w[: self.active_out]
            b = b[: self.active_out] if b is not None else None
        if self.depthwise:
            return w, b, self.active_out
        if self.active_in != self.in_channels:
            w = w[:, : self.active_in]
        return w, b, 1

    def forward(self, x: Tensor) -> Tensor:
        w, b, groups = self._active_weight()
        if self.quantized:
            x, w = self._quant_input(x), self._quant_weight(w)
        return F.conv2d(x, w, b, self.stride, self.padding, self.dilation, groups)

    def freeze(self) -> nn.Module:
        w, b, groups = self._active_weight()
        return _frozen_conv(self, w, b, groups)


class DynamicLinear(QuantLinear):
    """A linear layer whose input/output widths follow :class:`ChannelChoice` decisions."""

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, in_width: ChannelChoice | None = None,
        out_width: ChannelChoice | None = None, **quant: Any,
    ) -> None:
        super().__init__(in_features, out_features, bias, **quant)
        self.in_width, self.out_width = in_width, out_width
        self.active_in, self.active_out = in_features, out_features

    def choice_decisions(self) -> dict[str, list[Any]]:
        return {**_width_decisions(self.in_width, self.out_width), **self._quant_decisions()}

    def activate_choice(self, arch: Mapping[str, Any]) -> None:
        if self.in_width is not None:
            self.active_in = self.in_width.channels_for(arch[self.in_width.name])
        if self.out_width is not None:
            self.active_out = self.out_width.channels_for(arch[self.out_width.name])
        self._activate_bits(arch)

    def _active_weight(self) -> tuple[Tensor, Tensor | None]:
        w = self.weight[: self.active_out, : self.active_in]
        b = self.bias[: self.active_out] if self.bias is not None else None
        return w, b

    def forward(self, x: Tensor) -> Tensor:
        w, b = self._active_weight()
        if self.quantized:
            x, w = self._quant_input(x), self._quant_weight(w)
        return F.linear(x, w, b)

    def freeze(self) -> nn.Module:
        return _frozen_linear(self, *self._active_weight())


class DynamicBatchNorm2d(nn.BatchNorm2d, Choice):
    """BatchNorm over the first ``c`` channels of a max-width layer, with sliced running statistics.

    Args:
        num_features: the maximum width.
        width: the decision the width follows (``None``: always the maximum).
        affine: learnable scale/shift (SPOS supernets use ``False``).
        **kwargs: ``eps``, ``momentum`` as ``nn.BatchNorm2d``.
    """

    def __init__(self, num_features: int, width: ChannelChoice | None = None, affine: bool = False, **kwargs: Any):
        super().__init__(num_features, affine=affine, **kwargs)
        self.width = width
        self.active = num_features

    def choice_decisions(self) -> dict[str, list[Any]]:
        return _width_decisions(self.width)

    def activate_choice(self, arch: Mapping[str, Any]) -> None:
        if self.width is not None:
            self.active = self.width.channels_for(arch[self.width.name])

    def forward(self, x: Tensor) -> Tensor:
        c = self.active
        if c == self.num_features:
            return super().forward(x)
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative average, as BN re-calibration uses
                momentum = 1.0 / float(self.num_batches_tracked)
        use_batch_stats = self.training or not self.track_running_stats
        mean = self.running_mean[:c] if self.running_mean is not None else None
        var = self.running_var[:c] if self.running_var is not None else None
        weight = self.weight[:c] if self.weight is not None else None
        bias = self.bias[:c] if self.bias is not None else None
        return F.batch_norm(x, mean, var, weight, bias, use_batch_stats, momentum, self.eps)

    def freeze(self) -> nn.Module:
        return affine_batchnorm(self, self.active)


def scaled_channels(base: int, scales: Sequence[float], divisor: int = 1) -> tuple[int, ...]:
    """Channel counts ``base × scale`` for each scale, rounded to a multiple of ``divisor`` (at least one)."""
    return tuple(max(divisor, int(round(base * s / divisor)) * divisor) for s in scales)


