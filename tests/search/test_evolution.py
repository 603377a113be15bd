"""The pure evolution core, constraints and candidate scoring, without a Trainer."""

from __future__ import annotations

import json
import statistics

import pytest
import torch

from lightning_nas.nn import DynamicBatchNorm2d
from lightning_nas.search import (
    Constraint,
    EvolutionConfig,
    EvolutionState,
    accuracy,
    arch_key,
    check_feasible,
    collect_inputs,
    crossover,
    evolve,
    mutate,
    recalibrate_bn,
    top_k,
)
from lightning_nas.search import constraints as constraints_mod
from tests.helpers.tiny_space import TinySpace, synthetic_macs

DECISIONS = {f"g{i}": list(range(5)) for i in range(10)}
OPTIMUM = {k: (3 * i + 1) % 5 for i, k in enumerate(DECISIONS)}


def matches(arch: dict) -> float:
    return float(sum(arch[k] == v for k, v in OPTIMUM.items()))


def synthetic_score(archs: list[dict]) -> list[float]:
    return [matches(a) for a in archs]


def test_mutate_resamples_each_gene_with_prob():
    g = torch.Generator().manual_seed(0)
    parent = {k: 0 for k in DECISIONS}
    prob, trials = 0.3, 2000
    changed = torch.zeros(5)
    for _ in range(trials):
        child = mutate(parent, DECISIONS, prob, g)
        assert child.keys() == parent.keys() and all(child[k] in DECISIONS[k] for k in child)
        for v in child.values():
            changed[v] += 1
    n = trials * len(DECISIONS)
    # a resampled gene is uniform over its 5 values, so it stays 0 with probability 1/5
    assert changed[0] / n == pytest.approx(1 - prob * 4 / 5, abs=0.01)
    assert (changed[1:] / n).tolist() == pytest.approx([prob / 5] * 4, abs=0.01)


def test_crossover_takes_each_gene_from_either_parent():
    g = torch.Generator().manual_seed(1)
    a, b = {k: 0 for k in DECISIONS}, {k: 4 for k in DECISIONS}
    from_a = [sum(v == 0 for v in crossover(a, b, DECISIONS, g).values()) for _ in range(1000)]
    assert statistics.mean(from_a) / len(DECISIONS) == pytest.approx(0.5, abs=0.02)
    child = crossover(a, b, DECISIONS, g)
    assert all(child[k] in (a[k], b[k]) for k in DECISIONS)


def test_top_k_best_first_and_only_satisfied():
    scores = [(1, True), (3, False), (2, True), (2, True)]
    history = [{"score": s, "satisfied": ok, "arch": {"i": i}} for i, (s, ok) in enumerate(scores)]
    assert [r["arch"]["i"] for r in top_k(history, 2)] == [2, 3]


def test_evolution_visits_legal_unique_candidates_and_scores_each_once():
    scored: list[str] = []

    def score(archs):
        scored.extend(arch_key(a) for a in archs)
        return synthetic_score(archs)

    legal = lambda a: sum(a.values()) <= 15  # noqa: E731
    config = EvolutionConfig(population=20, topk=5, mutations=8, crossovers=8, generations=6)
    state = evolve(DECISIONS, config, score, is_legal=legal, costs=lambda a: {"sum": sum(a.values())}, seed=3)
    assert len(scored) == len(set(scored)) == len(state.history) == 6 * 20
    assert all(legal(r["arch"]) and r["costs"]["sum"] <= 15 for r in state.history)
    assert state.visited == set(scored)
    assert [r["generation"] for r in state.history] == sorted(r["generation"] for r in state.history)


def test_bounded_tries_stop_filling_a_small_space():
    decisions = {"a": [0, 1], "b": [0, 1, 2]}
    config = EvolutionConfig(population=50, topk=2, mutations=10, crossovers=10, generations=3)
    state = evolve(decisions, config, lambda archs: [0.0] * len(archs))
    assert len(state.history) == len(state.visited) == 6


def _best(strategy_config: EvolutionConfig, seed: int) -> float:
    return top_k(evolve(DECISIONS, strategy_config, synthetic_score, seed=seed).history, 1)[0]["score"]


def test_evolution_beats_random_search_on_a_synthetic_score():
    evolution = EvolutionConfig(population=20, topk=5, mutations=8, crossovers=8, generations=10)
    random = EvolutionConfig(population=20, topk=5, mutations=0, crossovers=0, generations=10)
    evo = [_best(evolution, s) for s in range(4)]
    rnd = [_best(random, s) for s in range(4)]
    assert statistics.mean(evo) > statistics.mean(rnd) + 1
    assert max(evo) == len(DECISIONS)  # the hidden optimum itself


def test_resumed_evolution_equals_uninterrupted():
    config = EvolutionConfig(population=10, topk=3, mutations=4, crossovers=4, generations=5)
    full = evolve(DECISIONS, config, synthetic_score, seed=7)
    part = evolve(DECISIONS, EvolutionConfig(**{**config.__dict__, "generations": 2}), synthetic_score, seed=7)
    restored = EvolutionState()
    restored.load_state_dict(json.loads(json.dumps(part.state_dict())))  # through JSON, as search_state.json
    resumed = evolve(DECISIONS, config, synthetic_score, seed=7, state=restored)
    assert resumed.state_dict() == full.state_dict()


def test_config_rejects_too_many_offspring():
    with pytest.raises(ValueError, match="mutations"):
        EvolutionConfig(population=10, mutations=6, crossovers=6)


def test_constraint_names_and_bounds():
    assert Constraint("macs", max=330e6).name == "macs_le_330M"
    assert Constraint("params", min=1e6).name == "params_ge_1M"
    assert Constraint.parse({"metric": "latency_ms", "max": 20}).satisfied({"latency_ms": 20.0})
    with pytest.raises(ValueError, match="Unknown constraint metric"):
        Constraint("flops", max=1)
    with pytest.raises(ValueError, match="max or a min"):
        Constraint("macs")


def test_impossible_constraint_names_the_range(monkeypatch):
    monkeypatch.setattr(constraints_mod, "cost_bounds", lambda space, metric, table=None: (1e6, 5e6))
    with pytest.raises(ValueError, match=r"macs_le_500K.*1M \(1e\+06\) to 5M \(5e\+06\)"):
        check_feasible(TinySpace(), [Constraint("macs", max=5e5)])
    check_feasible(TinySpace(), [Constraint("macs", max=2e6)])


def _tiny(seed: int = 0) -> TinySpace:
    torch.manual_seed(seed)
    space = TinySpace()
    space.activate({"block0.op": "conv3x3", "block1.op": "conv5x5", "block2.op": "conv1x1", "mix.width": 0.5})
    return space


def test_recalibrate_bn_changes_only_running_statistics():
    space = _tiny()
    params = {k: v.clone() for k, v in space.state_dict().items() if "running" not in k and "num_batches" not in k}
    space.eval()
    batches = [torch.randn(8, 3, 8, 8) * 3 + 2 for _ in range(3)]
    recalibrate_bn(space, batches)
    after = space.state_dict()
    assert all(torch.equal(after[k], v) for k, v in params.items())
    assert not space.training
    bn = next(m for m in space.modules() if isinstance(m, DynamicBatchNorm2d))
    assert bn.momentum == 0.1 and bn.active < bn.num_features
    # the full buffer was reset, the active slice re-estimated (cumulative average over 3 batches)
    assert int(bn.num_batches_tracked) == 3
    assert torch.equal(bn.running_mean[bn.active:], torch.zeros(bn.num_features - bn.active))
    assert not torch.equal(bn.running_mean[: bn.active], torch.zeros(bn.active))
    stem_bn = space.stem[1]
    expected = torch.stack([space.stem[0](x).mean((0, 2, 3)) for x in batches]).mean(0)
    assert torch.allclose(stem_bn.running_mean, expected.detach(), atol=1e-5)


def test_recalibration_is_independent_of_previous_stats():
    space, other = _tiny(), _tiny()
    for m in other.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.fill_(5.0)
    batches = [torch.randn(8, 3, 8, 8) for _ in range(2)]
    recalibrate_bn(space, batches)
    recalibrate_bn(other, batches)
    assert all(torch.allclose(a, b) for a, b in zip(space.buffers(), other.buffers()))


def test_accuracy_in_eval_mode_restores_mode():
    space = _tiny()
    space.train()
    x = torch.randn(10, 3, 8, 8)
    space.eval()
    y = space(x).argmax(-1)
    space.train()
    assert accuracy(space, [(x, y)]) == 1.0 and space.training


def test_collect_inputs_rebatches_whole_batches():
    loader = [(torch.randn(5, 3, 8, 8), torch.zeros(5)) for _ in range(10)]
    assert [len(b) for b in collect_inputs(loader, 12, "cpu")] == [5, 5, 5]
    assert [len(b) for b in collect_inputs(loader, 12, "cpu", batch_size=4)] == [4, 4, 4]


def test_synthetic_macs_is_a_cost():
    assert synthetic_macs(None, {"block0.op": "conv3x3", "mix.width": 1.0}) == 19.0


def test_latency_constraint_needs_a_table():
    class FakeTable:
        def predict(self, arch):
            return 2.5

    with pytest.raises(ValueError, match="latency table"):
        constraints_mod.cost_function(TinySpace(), "latency_ms")
    assert constraints_mod.cost_function(TinySpace(), "latency_ms", FakeTable())({}) == 2.5
