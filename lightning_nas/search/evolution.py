"""Evolutionary architecture search, as pure functions of an explicit ``torch.Generator``.

The algorithm is SPOS's (Guo et al., "Single Path One-Shot Neural Architecture Search with Uniform
Sampling", ECCV 2020, https://arxiv.org/abs/1904.00420; megvii-model/SinglePathOneShot):

- generation 0: ``population`` random legal archs;
- every later generation: ``mutations`` mutants of the top-``topk`` archs seen so far (each gene
  resampled with probability ``mutation_prob``), ``crossovers`` children of two top-``topk``
  parents (uniform per gene), then random legal archs until the population is full;
- a candidate is *legal* only if it was never visited and it meets the constraint; illegal
  candidates are rejected before they are scored, with ``max_tries_factor`` tries per slot;
- the answer is the best of every arch visited.

Random search (the baseline) is the same loop with no mutations and no crossovers.

Each generation draws from a generator seeded by ``(seed, run, generation)``, so a run resumed from
its :class:`EvolutionState` continues exactly, and every DDP rank proposes the same candidates
without talking.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from lightning_nas.arch import Arch
from lightning_nas.seeding import seeded_generator

__all__ = [
    "EvolutionConfig",
    "EvolutionState",
    "Record",
    "arch_key",
    "crossover",
    "evolve",
    "generation_generator",
    "mutate",
    "propose",
    "random_arch",
    "run_generation",
    "top_k",
]

Record = dict[str, Any]
"""One scored candidate: ``{"generation", "arch", "costs", "score", "constraint", "satisfied"}``."""

Decisions = Mapping[str, Sequence[Any]]


def arch_key(arch: Mapping[str, Any]) -> str:
    """A canonical string for ``arch`` (sorted JSON), used for the visited set and the score cache."""
    return json.dumps(dict(arch), sort_keys=True, separators=(",", ":"), default=str)


def _pick(values: Sequence[Any], u: float) -> Any:
    return values[min(int(u * len(values)), len(values) - 1)]


def random_arch(decisions: Decisions, generator: torch.Generator) -> Arch:
    """One value per decision, uniformly at random (as :meth:`SearchSpace.sample`)."""
    u = torch.rand(len(decisions), generator=generator, dtype=torch.float64).tolist()
    return {k: _pick(v, x) for (k, v), x in zip(decisions.items(), u)}


def mutate(arch: Mapping[str, Any], decisions: Decisions, prob: float, generator: torch.Generator) -> Arch:
    """Resample each gene of ``arch`` with probability ``prob``, uniformly over its values (possibly the same)."""
    gates = torch.rand(len(decisions), generator=generator, dtype=torch.float64).tolist()
    u = torch.rand(len(decisions), generator=generator, dtype=torch.float64).tolist()
    return {k: _pick(v, x) if g < prob else arch[k] for (k, v), g, x in zip(decisions.items(), gates, u)}


def crossover(a: Mapping[str, Any], b: Mapping[str, Any], decisions: Decisions, generator: torch.Generator) -> Arch:
    """A child taking each gene from ``a`` or ``b`` with probability 1/2."""
    u = torch.rand(len(decisions), generator=generator, dtype=torch.float64).tolist()
    return {k: a[k] if x < 0.5 else b[k] for k, x in zip(decisions, u)}


def top_k(history: Sequence[Record], k: int) -> list[Record]:
    """The ``k`` best records that satisfy their constraint, best first (ties: earliest first)."""
    legal = [r for r in history if r.get("satisfied", True)]
    return sorted(legal, key=lambda r: -r["score"])[:k]


def generation_generator(seed: int, run: int, generation: int) -> torch.Generator:
    """The generator of one generation: a function of ``(seed, run, generation)`` only."""
    return seeded_generator(seed, run, generation)


@dataclass
class EvolutionConfig:
    """Settings of one evolution (SPOS's official defaults).

    Args:
        population: candidates per generation.
        topk: parents are drawn from the ``topk`` best archs visited so far.
        mutations: mutants per generation (after the first).
        crossovers: crossover children per generation (after the first).
        mutation_prob: per-gene resampling probability of a mutation.
        generations: scored generations, the random first one included.
        max_tries_factor: each phase stops after ``max_tries_factor × slots`` proposals.
    """

    population: int = 50
    topk: int = 10
    mutations: int = 25
    crossovers: int = 25
    mutation_prob: float = 0.1
    generations: int = 20
    max_tries_factor: int = 10

    def __post_init__(self) -> None:
        if self.population < 1 or self.generations < 1 or self.topk < 1:
            raise ValueError("population, generations and topk must be at least 1")
        if self.mutations < 0 or self.crossovers < 0 or self.mutations + self.crossovers > self.population:
            raise ValueError(
                f"mutations ({self.mutations}) + crossovers ({self.crossovers}) must be within 0..population "
                f"({self.population})"
            )
        if not 0.0 <= self.mutation_prob <= 1.0:
            raise ValueError(f"mutation_prob must be in [0, 1], got {self.mutation_prob}")


@dataclass
class EvolutionState:
    """Where one evolution stands: enough to resume it exactly.

    Attributes:
        name: the constraint this evolution searches under.
        generation: generations already scored.
        population: the candidates of the last scored generation.
        history: every scored candidate, in scoring order.
        visited: keys (:func:`arch_key`) of every proposed candidate.
    """

    name: str = "unconstrained"
    generation: int = 0
    population: list[Arch] = field(default_factory=list)
    history: list[Record] = field(default_factory=list)
    visited: set[str] = field(default_factory=set)

    def state_dict(self) -> dict[str, Any]:
        """JSON-able primitives only."""
        return {
            "name": self.name,
            "generation": self.generation,
            "population": [dict(a) for a in self.population],
            "history": [dict(r) for r in self.history],
            "visited": sorted(self.visited),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.name = state.get("name", self.name)
        self.generation = int(state.get("generation", 0))
        self.population = [dict(a) for a in state.get("population", [])]
        self.history = [dict(r) for r in state.get("history", [])]
        self.visited = set(state.get("visited", []))


def _fill(
    out: list[Arch], slots: int, make: Callable[[], Arch], state: EvolutionState,
    is_legal: Callable[[Arch], bool], max_tries: int,
) -> None:
    """Append up to ``slots`` new legal archs made by ``make``, trying at most ``max_tries`` times."""
    target = len(out) + slots
    for _ in range(max_tries):
        if len(out) >= target:
            return
        arch = make()
        key = arch_key(arch)
        if key in state.visited or not is_legal(arch):
            continue
        state.visited.add(key)
        out.append(arch)


def propose(
    state: EvolutionState, decisions: Decisions, config: EvolutionConfig,
    is_legal: Callable[[Arch], bool], generator: torch.Generator,
) -> list[Arch]:
    """The legal, unvisited candidates of the next generation (marked visited).

    Args:
        state: the evolution so far (its ``visited`` set grows).
        decisions: the space's decisions.
        config: the evolution's settings.
        is_legal: whether an arch meets the constraint (checked before any scoring).
        generator: the generation's generator.
    """
    out: list[Arch] = []
    parents = [r["arch"] for r in top_k(state.history, config.topk)]
    tries = config.max_tries_factor

    def parent() -> Arch:
        return parents[int(torch.randint(len(parents), (1,), generator=generator))]

    if state.generation > 0 and parents:
        _fill(out, config.mutations, lambda: mutate(parent(), decisions, config.mutation_prob, generator),
              state, is_legal, tries * config.mutations)
        _fill(out, config.crossovers, lambda: crossover(parent(), parent(), decisions, generator),
              state, is_legal, tries * config.crossovers)
    _fill(out, config.population - len(out), lambda: random_arch(decisions, generator), state, is_legal,
          tries * config.population)
    return out


def run_generation(
    state: EvolutionState, decisions: Decisions, config: EvolutionConfig, *,
    is_legal: Callable[[Arch], bool], costs: Callable[[Arch], dict[str, float]],
    score: Callable[[list[Arch]], list[float]], generator: torch.Generator,
) -> list[Record]:
    """Propose, score and record one generation; returns its records."""
    candidates = propose(state, decisions, config, is_legal, generator)
    scores = score(candidates) if candidates else []
    records = [
        {"generation": state.generation, "arch": dict(a), "costs": costs(a), "score": float(s),
         "constraint": state.name, "satisfied": True}
        for a, s in zip(candidates, scores)
    ]
    state.history.extend(records)
    state.population = [dict(a) for a in candidates]
    state.generation += 1
    return records


def evolve(
    decisions: Decisions, config: EvolutionConfig, score: Callable[[list[Arch]], list[float]], *,
    is_legal: Callable[[Arch], bool] = lambda arch: True,
    costs: Callable[[Arch], dict[str, float]] = lambda arch: {},
    seed: int = 0, run: int = 0, state: EvolutionState | None = None,
    on_generation: Callable[[EvolutionState], None] | None = None,
) -> EvolutionState:
    """Run (or resume) one evolution to ``config.generations``.

    Args:
        decisions: the space's decisions, ``{name: [values]}``.
        config: the evolution's settings; :class:`EvolutionConfig` with no mutations and
            crossovers is random search.
        score: scores a list of archs (higher is better); called once per generation.
        is_legal: the constraint, checked before scoring.
        costs: the costs stored with each record.
        seed: the search seed.
        run: the index of this evolution among several (one per constraint).
        state: a state to resume; a fresh one if ``None``.
        on_generation: called after each generation (saving, progress).

    Returns:
        The final state; its best arch is ``top_k(state.history, 1)``.

    Example::

        state = evolve(space.decisions(), EvolutionConfig(generations=5), score=lambda archs: [...])
    """
    state = state if state is not None else EvolutionState()
    while state.generation < config.generations:
        generator = generation_generator(seed, run, state.generation)
        run_generation(state, decisions, config, is_legal=is_legal, costs=costs, score=score, generator=generator)
        if on_generation is not None:
            on_generation(state)
    return state
