"""Hardware cost models for mixed-precision quantization (HAQ): a cost per layer × (weight bits, activation bits).

HAQ's point is that the budget is a *hardware* quantity (latency, energy, size), not a proxy. Each model
here turns a :class:`LayerProfile` — shapes recorded on one real forward, MACs counted by
:func:`lightning_nas.cost.count_macs` — and a bit pair into a cost:

- :class:`BitOps`: ``MACs × wbits × abits`` (the hardware-agnostic proxy).
- :class:`ModelSize`: ``#weights × wbits`` bits (activation bits cost nothing).
- :class:`BitSerialAccelerator`: a BISMO-like bit-serial matrix engine (Umuroglu et al., FPL 2018): every
  weight bit-plane meets every activation bit-plane, so compute time is ``MACs × wbits × abits`` binary
  dot products over ``Dm·Dn·Dk`` binary lanes per cycle.
- :class:`BitFlexibleAccelerator`: a BitFusion-like array (Sharma et al., ISCA 2018) of 2-bit BitBricks that
  fuse into wider multipliers: a ``wbits × abits`` MAC takes ``ceil(wbits/2)·ceil(abits/2)`` bricks.

Both accelerators are rooflines: ``latency = max(compute, memory)``, memory being the weight and input
bits moved from DRAM at the design's bandwidth (the engines overlap fetch and execute), so memory-bound
layers (depthwise convs, fully connected layers at batch 1) prefer fewer *weight* bits and compute-bound
ones fewer *activation × weight* bits — the behaviour the HAQ paper reports. The design constants are
documented public figures or round illustrative ones (see each preset), not measurements: for absolute
numbers, subclass :class:`HardwareModel` with a measured lookup table; budgets are ratios, so only the
relative costs matter.

:func:`fit_budget` is HAQ's "action wall": bits are lowered one at a time, layers last → first (activation
bits, then weight bits), until the policy fits.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lightning_nas.cost.tables import count_macs

__all__ = [
    "BitFlexibleAccelerator",
    "BitOps",
    "BitSerialAccelerator",
    "HardwareModel",
    "LayerProfile",
    "ModelSize",
    "cost_lookup",
    "fit_budget",
    "policy_cost",
    "profile_layers",
]

Policy = list[tuple[int, int]]  # (wbits, abits) per layer
CostLookup = list[list[list[float]]]  # [layer][wbits][abits]


@dataclass(frozen=True)
class LayerProfile:
    """What a cost model (and HAQ's state) needs to know about one conv or linear layer.

    Args:
        name: the module's qualified name in the network (``"features.3.conv.1.0"``).
        kind: ``"conv"`` or ``"linear"``.
        in_channels: input channels (features).
        out_channels: output channels (features).
        kernel_size: kernel height (1 for linear layers).
        stride: stride (0 for linear layers, as the official code).
        groups: convolution groups (1 for linear layers).
        n_weights: elements of the weight tensor.
        in_hw: input feature-map size ``h × w`` (1 for a linear layer on a vector).
        in_elements: elements of one input sample (for memory traffic).
        macs: multiply-accumulates of one sample, counted by ``FlopCounterMode``.
        act_signed: whether the recorded input had negative values (no ReLU before the layer).
    """

    name: str
    kind: str
    in_channels: int
    out_channels: int
    kernel_size: int
    stride: int
    groups: int
    n_weights: int
    in_hw: int
    in_elements: int
    macs: float
    act_signed: bool = False

    @property
    def depthwise(self) -> bool:
        return self.kind == "conv" and self.groups > 1 and self.groups == self.in_channels


def _profile(name: str, layer: nn.Module, x: torch.Tensor) -> LayerProfile:
    one = x[:1]
    macs = count_macs(layer, one)
    signed = bool((x < 0).any())
    if isinstance(layer, nn.Conv2d):
        return LayerProfile(name, "conv", layer.in_channels, layer.out_channels, layer.kernel_size[0],
                            layer.stride[0], layer.groups, layer.weight.numel(), one.shape[-2] * one.shape[-1],
                            one[0].numel(), macs, signed)
    in_hw = math.prod(one.shape[1:-1]) if one.dim() > 2 else 1
    return LayerProfile(name, "linear", layer.in_features, layer.out_features, 1, 0, 1, layer.weight.numel(), in_hw,
                        one[0].numel(), macs, signed)


def profile_layers(net: nn.Module, sample: torch.Tensor) -> list[LayerProfile]:
    """Profile every conv and linear layer that runs on ``net(sample)``, in module order.

    Input shapes are recorded by forward pre-hooks on one forward (eval mode, no grad); MACs are then
    counted per layer with :func:`~lightning_nas.cost.count_macs` on one sample of the recorded shape.
    Pass a real batch to learn which inputs are signed.
    """
    inputs: dict[str, torch.Tensor] = {}
    layers = {n: m for n, m in net.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}

    def hook(name: str) -> Any:
        return lambda m, args: inputs.setdefault(name, args[0].detach())

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in layers.items()]
    was_training = net.training
    try:
        net.eval()
        with torch.no_grad():
            net(sample)
    finally:
        for h in handles:
            h.remove()
        net.train(was_training)
    with torch.no_grad():
        return [_profile(n, m, inputs[n]) for n, m in layers.items() if n in inputs]


class HardwareModel(ABC):
    """A cost per layer and bit pair; subclass to plug in a simulator or a measured table.

    Attributes:
        unit: what :meth:`layer_cost` returns (``"ms"``, ``"bits"``, ``"bit-ops"``).
        uses_abits: whether activation bits change the cost (the budget walk skips them otherwise).
    """

    unit: str = ""
    uses_abits: bool = True

    @abstractmethod
    def layer_cost(self, layer: LayerProfile, wbits: int, abits: int) -> float:
        """The cost of ``layer`` with ``wbits``-bit weights and ``abits``-bit inputs."""

    def describe(self) -> dict[str, Any]:
        """A JSON-able description (saved beside the policy)."""
        return {"model": type(self).__name__, "unit": self.unit,
                **{k: v for k, v in vars(self).items() if isinstance(v, (int, float, str))}}


class BitOps(HardwareModel):
    """``MACs × wbits × abits``: the hardware-agnostic cost of a mixed-precision network."""

    unit = "bit-ops"

    def layer_cost(self, layer: LayerProfile, wbits: int, abits: int) -> float:
        return layer.macs * wbits * abits


class ModelSize(HardwareModel):
    """Weight storage in bits, ``#weights × wbits`` (HAQ's model-size-constrained setting)."""

    unit = "bits"
    uses_abits = False

    def layer_cost(self, layer: LayerProfile, wbits: int, abits: int) -> float:
        return float(layer.n_weights * wbits)


class _RooflineAccelerator(HardwareModel):
    """``latency = max(compute, memory)`` in milliseconds, for one sample."""

    unit = "ms"
    PRESETS: dict[str, dict[str, float]] = {}

    def __init__(self, preset: str, freq_mhz: float | None, bandwidth_gbps: float | None) -> None:
        if preset not in self.PRESETS:
            raise ValueError(f"unknown {type(self).__name__} preset {preset!r}; choose one of {sorted(self.PRESETS)}")
        spec = self.PRESETS[preset]
        self.preset = preset
        self.freq_mhz = float(freq_mhz if freq_mhz is not None else spec["freq_mhz"])
        self.bandwidth_gbps = float(bandwidth_gbps if bandwidth_gbps is not None else spec["bandwidth_gbps"])

    @abstractmethod
    def cycles(self, layer: LayerProfile, wbits: int, abits: int) -> float:
        """Compute cycles of ``layer`` at this bit pair."""

    def layer_cost(self, layer: LayerProfile, wbits: int, abits: int) -> float:
        compute_ms = self.cycles(layer, wbits, abits) / (self.freq_mhz * 1e3)
        traffic_bytes = (layer.n_weights * wbits + layer.in_elements * abits) / 8
        memory_ms = traffic_bytes / (self.bandwidth_gbps * 1e6)
        return max(compute_ms, memory_ms)


class BitSerialAccelerator(_RooflineAccelerator):
    """A BISMO-like bit-serial accelerator: compute ∝ ``MACs × wbits × abits / (Dm·Dn·Dk)``.

    BISMO (Umuroglu, Rasnayake, Själander, FPL 2018) computes a ``wbits × abits`` product as
    ``wbits·abits`` binary matrix products on a ``Dm × Dn`` array of dot-product units, each ANDing and
    pop-counting ``Dk`` bit pairs per cycle. HAQ used it on a Zynq-7020 (edge) and a VU9P (cloud).

    Presets (``binary_lanes = Dm·Dn·Dk``):
        ``edge``: 8×8×256 lanes at 200 MHz (BISMO's PYNQ-Z1 instance), 4.2 GB/s DDR3.
        ``cloud``: 16×16×256 lanes at 250 MHz, 19.2 GB/s (round illustrative figures for a VU9P).

    Args:
        preset: ``"edge"`` or ``"cloud"``.
        binary_lanes: override ``Dm·Dn·Dk``.
        freq_mhz: override the clock.
        bandwidth_gbps: override the DRAM bandwidth (GB/s).
    """

    PRESETS = {
        "edge": {"binary_lanes": 8 * 8 * 256, "freq_mhz": 200.0, "bandwidth_gbps": 4.2},
        "cloud": {"binary_lanes": 16 * 16 * 256, "freq_mhz": 250.0, "bandwidth_gbps": 19.2},
    }

    def __init__(self, preset: str = "edge", binary_lanes: int | None = None, freq_mhz: float | None = None,
                 bandwidth_gbps: float | None = None) -> None:
        super().__init__(preset, freq_mhz, bandwidth_gbps)
        self.binary_lanes = int(binary_lanes if binary_lanes is not None else self.PRESETS[preset]["binary_lanes"])

    def cycles(self, layer: LayerProfile, wbits: int, abits: int) -> float:
        return layer.macs * wbits * abits / self.binary_lanes


class BitFlexibleAccelerator(_RooflineAccelerator):
    """A BitFusion-like bit-flexible accelerator: compute ∝ ``MACs × ceil(wbits/2) × ceil(abits/2) / bricks``.

    Bit Fusion (Sharma et al., ISCA 2018) builds multipliers from 2-bit BitBricks: 16 bricks fuse into one
    8×8 MAC per cycle, or into 16 independent 2×2 MACs, so odd bit-widths cost as much as the next even one.

    Presets:
        ``edge``: 16×32 fusion units × 16 bricks = 8,192 bricks at 500 MHz (the paper's configuration),
        ``cloud``: 4× the bricks at 500 MHz; 12.8 and 51.2 GB/s (round illustrative bandwidths).

    Args:
        preset: ``"edge"`` or ``"cloud"``.
        bricks: override the number of 2-bit BitBricks.
        freq_mhz: override the clock.
        bandwidth_gbps: override the DRAM bandwidth (GB/s).
    """

    PRESETS = {
        "edge": {"bricks": 16 * 32 * 16, "freq_mhz": 500.0, "bandwidth_gbps": 12.8},
        "cloud": {"bricks": 4 * 16 * 32 * 16, "freq_mhz": 500.0, "bandwidth_gbps": 51.2},
    }

    def __init__(self, preset: str = "edge", bricks: int | None = None, freq_mhz: float | None = None,
                 bandwidth_gbps: float | None = None) -> None:
        super().__init__(preset, freq_mhz, bandwidth_gbps)
        self.bricks = int(bricks if bricks is not None else self.PRESETS[preset]["bricks"])

    def cycles(self, layer: LayerProfile, wbits: int, abits: int) -> float:
        return layer.macs * math.ceil(wbits / 2) * math.ceil(abits / 2) / self.bricks


def cost_lookup(model: HardwareModel, layers: Sequence[LayerProfile], max_bits: int) -> CostLookup:
    """``table[i][w][a]``: the cost of layer ``i`` at ``w``/``a`` bits, ``1 ≤ w, a ≤ max_bits`` (index 0 unused)."""
    return [[[model.layer_cost(layer, w, a) if w and a else math.inf for a in range(max_bits + 1)]
             for w in range(max_bits + 1)] for layer in layers]


def policy_cost(table: CostLookup, policy: Sequence[Sequence[int]]) -> float:
    """Σ over layers of the looked-up cost of each layer's ``(wbits, abits)``."""
    return math.fsum(table[i][w][a] for i, (w, a) in enumerate(policy))


def fit_budget(policy: Sequence[Sequence[int]], table: CostLookup, target: float, min_bits: int,
               lower_abits: bool = True, pinned: Collection[int] = ()) -> Policy:
    """Lower bits until ``policy`` costs at most ``target`` (HAQ's final action wall).

    Walks layers last → first, lowering each layer's activation bits and then its weight bits by one,
    checking the budget after every change, and repeats the walk while over budget. Stops early (over
    budget) only when every bit is at ``min_bits``.

    Args:
        policy: ``(wbits, abits)`` per layer.
        table: :func:`cost_lookup` of the hardware model.
        target: the budget.
        min_bits: the lowest bit-width allowed.
        lower_abits: lower activation bits too (``False`` for models where they cost nothing).
        pinned: indices of layers whose bits are never lowered (HAQ keeps the first and last at 8 bits).

    Returns:
        The fitted policy (a new list).
    """
    bits = [[int(w), int(a)] for w, a in policy]
    slots = (1, 0) if lower_abits else (0,)
    while policy_cost(table, bits) > target:
        changed = False
        for i in reversed(range(len(bits))):
            layer = bits[i]
            for slot in slots if i not in pinned else ():
                if layer[slot] > min_bits:
                    layer[slot] -= 1
                    changed = True
                    if policy_cost(table, bits) <= target:
                        return [(w, a) for w, a in bits]
        if not changed:
            break
    return [(w, a) for w, a in bits]
