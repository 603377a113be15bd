"""Cost model: MACs, params, BitOps from lookup tables, latency from measured tables."""

from lightning_nas.cost.hardware import (
    BitFlexibleAccelerator,
    BitOps,
    BitSerialAccelerator,
    HardwareModel,
    LayerProfile,
    ModelSize,
    fit_budget,
    profile_layers,
)
from lightning_nas.cost.latency import LatencyTable, measure_ms
from lightning_nas.cost.tables import CostTable, bitops, cost_of, cost_range, cost_table, count_macs, macs, params

__all__ = [
    "BitFlexibleAccelerator", "BitOps", "BitSerialAccelerator", "CostTable", "HardwareModel", "LatencyTable",
    "LayerProfile", "ModelSize", "bitops", "cost_of", "cost_range", "cost_table", "count_macs", "fit_budget", "macs",
    "measure_ms", "params", "profile_layers",
]
