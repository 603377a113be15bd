"""Fake quantization with straight-through gradients, and quantized conv/linear layers.

Two quantizers, chosen per layer by ``quantizer``:

- ``"haq"``: the official HAQ linear quantizer (mit-han-lab/haq, ``lib/utils/quantize_utils.py``, ``QModule``).
  Weights per tensor, symmetric, ``scale = t / (2^(b-1) - 1)`` with the threshold ``t = max|w|`` at 5 bits or
  more and the KL-divergence-optimal :func:`kl_threshold` below. Activations clipped at ``[0, r]`` after a ReLU
  (``2^b - 1`` levels) or ``[-r, r]`` (``2^(b-1) - 1`` levels, the official "full wave", whose KL threshold uses
  ``b - 1`` bits), with ``r = min(6, max|x|)`` of the calibration batch and, below 5 (full wave: 6) bits, at most
  the KL threshold. Thresholds are set by a calibration pass (:meth:`_QuantMixin.begin_calibration`), which runs
  the float network as the official ``calibrate`` does, and then stay fixed; gradients are straight-through,
  zero for clipped activations.
- ``"ema"``: ours, the default of the supernets' layers. Weights per output channel (``per_channel``) at
  ``max|w|``, recomputed every forward; activations on ``[0, max]`` (or ``[-max, max]``) with ``max`` an
  exponential moving average (momentum 0.1) of batch maxima, updated in every training forward; no clipping
  below the maximum and an identity gradient everywhere.

32 bits = float.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_nas.nn.choice import Choice

FLOAT_BITS = 32
QUANTIZERS = ("haq", "ema")
KL_BELOW_BITS = 5  # the official quantizer clips at the KL threshold below this many bits
ACT_CLIP = 6.0  # the official activation range never exceeds 6 (ReLU6 networks)


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


def _check_quantizer(quantizer: str) -> None:
    if quantizer not in QUANTIZERS:
        raise ValueError(f"quantizer must be one of {QUANTIZERS}, got {quantizer!r}")


def quantize_weight(w: Tensor, bits: int, per_channel: bool = True, threshold: float | Tensor | None = None) -> Tensor:
    """Symmetric linear fake quantization of a weight, straight-through gradient.

    Args:
        w: the weight.
        bits: bit-width (``>= 32``: unchanged).
        per_channel: one ``max|w|`` threshold per output channel instead of one per tensor.
        threshold: a fixed clipping threshold (per tensor) instead of ``max|w|``.
    """
    if bits >= FLOAT_BITS:
        return w
    _check_bits(bits)
    levels = 2 ** (bits - 1) - 1
    ref = w.detach().abs()
    if threshold is not None:
        thr = torch.as_tensor(threshold, dtype=w.dtype, device=w.device)
    else:
        thr = ref.flatten(1).amax(1).view(-1, *([1] * (w.dim() - 1))) if per_channel and w.dim() > 1 else ref.max()
    scale = thr.clamp_min(1e-8) / levels
    q = torch.round(w.detach() / scale).clamp_(-levels, levels).mul_(scale)
    return w + (q - w).detach()


def quantize_activation(x: Tensor, bits: int, max_val: Tensor, signed: bool = False, clip_grad: bool = False) -> Tensor:
    """Linear fake quantization of an activation on ``[0, max]`` (or ``[-max, max]``), straight-through.

    Args:
        x: the activation.
        bits: bit-width (``>= 32``: unchanged).
        max_val: the range's upper end.
        signed: ``[-max, max]`` with ``2^(b-1) - 1`` levels a side instead of ``[0, max]`` with ``2^b - 1``.
        clip_grad: no gradient for the clipped values (the official HAQ quantizer); else identity everywhere.
    """
    if bits >= FLOAT_BITS:
        return x
    _check_bits(bits)
    levels = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
    scale = max_val.clamp_min(1e-8) / levels
    q = torch.round(x.detach() / scale).clamp_(-levels if signed else 0, levels).mul_(scale)
    if clip_grad:
        x = torch.minimum(torch.maximum(x, -max_val if signed else torch.zeros_like(max_val)), max_val)
    return x + (q - x).detach()


def _interp_rows(fp: Tensor, fp_len: Tensor, out_len: Tensor, width: int) -> Tensor:
    """Row ``k``: ``fp[k, :fp_len[k]]``, samples on a uniform grid over [0, 1], linearly interpolated at
    ``out_len[k]`` uniform points over [0, 1] (``np.interp``); ``width`` columns, those past ``out_len[k]`` unused."""
    pos = torch.arange(width, dtype=fp.dtype)[None, :] * ((fp_len - 1) / (out_len - 1))[:, None]
    lo = torch.minimum(pos.floor(), (fp_len - 2)[:, None]).clamp_min(0).long()
    left, right = fp.gather(1, lo), fp.gather(1, lo + 1)
    return left + (right - left) * (pos - lo)


def _kl_divergences(cdf: Tensor, cand: Tensor, n: int) -> Tensor:
    """The official divergence of each candidate bin count ``cand`` (see :func:`kl_threshold`)."""
    bins = len(cdf)
    col = torch.arange(bins)[None, :]
    p = torch.where(col >= (cand - 1)[:, None], torch.ones(()), cdf.expand(len(cand), bins))
    if n == 1:  # a single level: every resampled point is the first value
        head = p[:, :1].expand(-1, bins)
    else:
        down = _interp_rows(p, cand, torch.full_like(cand, n), n)
        head = _interp_rows(down, torch.full_like(cand, n), cand, bins)
    q = torch.where(col < cand[:, None], head, p)
    terms = (cdf - q) * torch.log2(cdf / q)
    return torch.where(cdf == q, torch.zeros_like(terms), terms).sum(1)


def kl_threshold(x: Tensor, bits: int, chunk: int = 256) -> float:
    """The official HAQ KL-divergence-optimal clipping threshold of ``|x|`` for ``bits`` bits.

    As ``_compute_threshold`` in mit-han-lab/haq ``lib/utils/quantize_utils.py``: a histogram of ``|x|`` on
    ``[0, max|x|]`` with numpy's ``"sqrt"`` bin count (``ceil(sqrt(N) · max / (max - min))``) and its cumulative
    distribution ``c``; for every candidate ``i`` from ``n + 1`` to the bin count (``n = 2^(bits-1)``), ``p`` is
    ``c`` set to 1 from bin ``i - 1`` on, ``q`` is ``p`` with its first ``i`` values resampled (linear
    interpolation on uniform grids over [0, 1]) to ``n`` points and back to ``i``, and the divergence is
    ``Σ (c - q) · log2(c / q)``. The threshold is ``i + 0.5`` bin widths for the ``i`` of least divergence (the
    first on ties), so it may exceed ``max|x|`` by up to 1.5 bins, as the official one does. With fewer than
    ``n + 1`` bins it is ``max|x|``. One difference: a ``0 · log(0/0)`` term (an empty first bin) counts 0 here;
    the official code gets NaN for every candidate and so returns its first.

    Args:
        x: the weight or activation.
        bits: the bit-width (the official code passes ``b - 1`` for full-wave activations).
        chunk: candidates evaluated at once (memory: ``chunk × bins`` doubles).
    """
    a = x.detach().abs().flatten().double().cpu()
    top, low = float(a.max()), float(a.min())
    if top == 0.0:
        return 0.0
    bins = math.ceil(math.sqrt(a.numel()) * top / (top - low)) if top > low else 1
    n = 2 ** (int(bits) - 1)
    if n + 1 > bins:
        return top
    hist = torch.histc(a, bins=bins, min=0.0, max=top)
    cdf = (hist / hist.sum()).cumsum(0)
    best_d, best_i = math.inf, n + 1
    for start in range(n + 1, bins + 1, chunk):
        cand = torch.arange(start, min(start + chunk, bins + 1), dtype=torch.float64)
        d = _kl_divergences(cdf, cand, n)
        k = int(torch.argmin(d))
        if float(d[k]) < best_d:
            best_d, best_i = float(d[k]), int(cand[k])
    return (best_i + 0.5) * top / bins


def haq_weight_threshold(w: Tensor, bits: int) -> float:
    """The official weight threshold: ``max|w|`` at ``KL_BELOW_BITS`` (5) bits or more, else :func:`kl_threshold`."""
    return kl_threshold(w, bits) if bits < KL_BELOW_BITS else float(w.detach().abs().max())


def haq_activation_range(x: Tensor, bits: int, signed: bool = False) -> float:
    """The official activation range of one batch: ``min(6, max|x|)``, and at most the KL threshold below 5
    effective bits (``b`` after a ReLU, ``b - 1`` full wave)."""
    effective = bits - 1 if signed else bits
    r = min(ACT_CLIP, float(x.detach().abs().max()))
    return min(r, kl_threshold(x, effective)) if effective < KL_BELOW_BITS else r


class _QuantMixin(Choice):
    """Bit-width and range state shared by the quantized conv and linear layers (see the module docstring)."""

    wbits: int
    abits: int
    weight: Tensor

    def _init_quant(self, wbits: int, abits: int, act_signed: bool, per_channel: bool, bits: BitChoice | None,
                    quantizer: str = "ema") -> None:
        _check_quantizer(quantizer)
        self.wbits, self.abits, self.bits = wbits, abits, bits
        self.act_signed, self.per_channel, self.quantizer = act_signed, per_channel, quantizer
        self.act_momentum = 0.1
        self.calibrating = False
        self.register_buffer("act_max", torch.zeros(()))
        # the "haq" weight threshold, set by calibration; policy files carry it, state dicts stay as they were
        self.register_buffer("w_range", torch.zeros(()), persistent=False)

    @property
    def quantized(self) -> bool:
        return self.wbits < FLOAT_BITS or self.abits < FLOAT_BITS

    def _quant_decisions(self) -> dict[str, list[Any]]:
        return self.bits.decisions() if self.bits is not None else {}

    def _activate_bits(self, arch: Mapping[str, Any]) -> None:
        if self.bits is not None:
            self.wbits = int(arch[self.bits.weight_name])
            self.abits = int(arch[self.bits.act_name])

    # --- calibration ---------------------------------------------------------------------------------------
    def begin_calibration(self) -> None:
        """Forwards from now on until :meth:`end_calibration` measure the activation range afresh.

        ``"haq"``: as the official ``calibrate``, the forwards run the float layer and set the range from the
        batch (the largest over several batches); the weight threshold is set now, from the current weights.
        ``"ema"``: the forwards are quantized and update the moving average, as training forwards do.
        """
        self.act_max.zero_()
        self.calibrating = True
        if self.quantizer == "haq":
            self.w_range.fill_(haq_weight_threshold(self.weight, self.wbits) if self.wbits < FLOAT_BITS else 0.0)

    def end_calibration(self) -> None:
        self.calibrating = False

    def _observe(self, x: Tensor) -> None:
        with torch.no_grad():
            if self.quantizer == "haq":
                self.act_max.fill_(max(float(self.act_max), haq_activation_range(x, self.abits, self.act_signed)))
                return
            batch_max = x.detach().abs().max() if self.act_signed else x.detach().max().clamp_min(0)
            ema = self.act_max * (1 - self.act_momentum) + batch_max * self.act_momentum
            self.act_max.copy_(torch.where(self.act_max > 0, ema, batch_max))

    # --- the forward -----------------------------------------------------------------------------------------
    def _quant_input(self, x: Tensor) -> Tensor:
        if self.abits >= FLOAT_BITS:
            return x
        haq = self.quantizer == "haq"
        if self.calibrating or (self.training and not haq):
            self._observe(x)
            if haq:
                return x
        if haq:  # uncalibrated: the official initial range, 6
            rng = torch.where(self.act_max > 0, self.act_max, torch.full_like(self.act_max, ACT_CLIP))
            return quantize_activation(x, self.abits, rng, self.act_signed, clip_grad=True)
        return quantize_activation(x, self.abits, self.act_max, self.act_signed)

    def _quant_weight(self, w: Tensor) -> Tensor:
        if self.quantizer != "haq":
            return quantize_weight(w, self.wbits, self.per_channel)
        if self.calibrating:
            return w
        thr = torch.where(self.w_range > 0, self.w_range, w.detach().abs().max())  # uncalibrated: max|w|
        return quantize_weight(w, self.wbits, threshold=thr)

    # --- state -------------------------------------------------------------------------------------------------
    def quant_spec(self) -> dict[str, Any]:
        """Bits, quantizer and ranges: a layer entry of HAQ's ``best_policy.json``."""
        return {"wbits": self.wbits, "abits": self.abits, "act_max": float(self.act_max),
                "act_signed": self.act_signed, "quantizer": self.quantizer, "w_range": float(self.w_range)}

    def load_quant_spec(self, spec: Mapping[str, Any]) -> None:
        """Set what :meth:`quant_spec` wrote; keys other than the bits are optional (older files)."""
        self.wbits, self.abits = int(spec["wbits"]), int(spec["abits"])
        if "act_max" in spec:
            self.act_max.fill_(float(spec["act_max"]))
        if "w_range" in spec:
            self.w_range.fill_(float(spec["w_range"]))
        self.act_signed = bool(spec.get("act_signed", self.act_signed))
        self.quantizer = str(spec.get("quantizer", self.quantizer))
        _check_quantizer(self.quantizer)

    def _copy_quant_state(self, other: _QuantMixin) -> None:
        other.wbits, other.abits, other.act_signed, other.per_channel, other.quantizer = (
            self.wbits, self.abits, self.act_signed, self.per_channel, self.quantizer,
        )
        other.act_max.copy_(self.act_max)
        other.w_range.copy_(self.w_range)


class QuantConv2d(nn.Conv2d, _QuantMixin):
    """A ``Conv2d`` with fake-quantized weights (``wbits``) and inputs (``abits``); 32 bits = float.

    Args:
        *args: as ``nn.Conv2d``.
        wbits: weight bit-width.
        abits: input activation bit-width.
        act_signed: whether the input can be negative (no ReLU before it).
        per_channel: one weight scale per output channel instead of one per tensor (``"ema"`` only).
        bits: a :class:`BitChoice` whose decisions set ``wbits``/``abits`` (mixed-precision search).
        quantizer: ``"ema"`` (ours) or ``"haq"`` (the official HAQ quantizer); see the module docstring.
        **kwargs: as ``nn.Conv2d``.
    """

    def __init__(
        self, *args: Any, wbits: int = FLOAT_BITS, abits: int = FLOAT_BITS, act_signed: bool = False,
        per_channel: bool = True, bits: BitChoice | None = None, quantizer: str = "ema", **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._init_quant(wbits, abits, act_signed, per_channel, bits, quantizer)

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
        quantizer: str = "ema",
    ) -> None:
        super().__init__(in_features, out_features, bias)
        self._init_quant(wbits, abits, act_signed, per_channel, bits, quantizer)

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
