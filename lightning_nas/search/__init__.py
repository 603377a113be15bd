"""Searchers: evolution and random search over a trained supernet, constraints, candidate scoring."""

from lightning_nas.search.constraints import METRICS, Constraint, check_feasible, cost_bounds, cost_function
from lightning_nas.search.evaluate import accuracy, collect_batches, collect_inputs, recalibrate_bn
from lightning_nas.search.evolution import (
    EvolutionConfig,
    EvolutionState,
    Record,
    arch_key,
    crossover,
    evolve,
    mutate,
    propose,
    random_arch,
    run_generation,
    top_k,
)

__all__ = [
    "METRICS",
    "Constraint",
    "EvolutionConfig",
    "EvolutionState",
    "Record",
    "accuracy",
    "arch_key",
    "check_feasible",
    "collect_batches",
    "collect_inputs",
    "cost_bounds",
    "cost_function",
    "crossover",
    "evolve",
    "mutate",
    "propose",
    "random_arch",
    "recalibrate_bn",
    "run_generation",
    "top_k",
]
