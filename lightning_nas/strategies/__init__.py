"""How a supernet's path is chosen while it trains: arch-parameter estimators shared by the method modules."""

from lightning_nas.strategies.binary_gates import (
    ZERO,
    BinaryGates,
    CandidateCosts,
    GateSample,
    choices_by_decision,
    gate_values,
    inactive_parameters,
    latency_loss,
    reinforce_rewards,
    rescale_logits_,
    sample_gates,
    update_baseline,
)

__all__ = [
    "ZERO",
    "BinaryGates",
    "CandidateCosts",
    "GateSample",
    "choices_by_decision",
    "gate_values",
    "inactive_parameters",
    "latency_loss",
    "reinforce_rewards",
    "rescale_logits_",
    "sample_gates",
    "update_baseline",
]
