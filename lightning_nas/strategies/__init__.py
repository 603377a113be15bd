"""How a supernet's path is chosen while it trains: arch-parameter estimators shared by the method modules, and
``path_policy``, the seam through which a module picks its own training paths for ``PathSampling``."""

from lightning_nas.strategies.binary_gates import (
    ZERO,
    BinaryGates,
    GateSample,
    choices_by_decision,
    gate_values,
    latency_loss,
    reinforce_rewards,
    rescale_logits_,
    sample_gates,
    update_baseline,
)
from lightning_nas.strategies.latency_costs import CandidateCosts, cost_target, latency_table_for, table_path
from lightning_nas.strategies.path_policy import SAMPLE_PATH, draw_path, path_sampler

__all__ = [
    "SAMPLE_PATH",
    "ZERO",
    "BinaryGates",
    "CandidateCosts",
    "GateSample",
    "choices_by_decision",
    "cost_target",
    "draw_path",
    "gate_values",
    "latency_loss",
    "latency_table_for",
    "path_sampler",
    "reinforce_rewards",
    "rescale_logits_",
    "sample_gates",
    "table_path",
    "update_baseline",
]
