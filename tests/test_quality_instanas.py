"""``benchmarks.quality_instanas``: the latency-matched random density, and the quick path end to end."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import quality_instanas
from lightning_nas.cost.option_latency import OptionLatency


def _table() -> OptionLatency:
    option_ms = torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.5, 4.0], [1.0, 1.0, 1.0]])
    forced = [[False, False, False], [False, False, True], [False, False, False]]  # cell 1 forces option 2
    return OptionLatency(option_ms, 0.25, {"forced": forced})


def test_expected_latency_matches_the_table_on_sampled_policies() -> None:
    table = _table()
    gen = torch.Generator().manual_seed(0)
    for q in (0.0, 0.2, 0.7, 1.0):
        policy = (torch.rand(20_000, 3, 3, generator=gen) < q).float()
        assert quality_instanas.expected_latency(table, q) == pytest.approx(float(table.of(policy).mean()), rel=0.02)
    assert quality_instanas.expected_latency(table, 0.0) == pytest.approx(table.min_ms)
    assert quality_instanas.expected_latency(table, 1.0) == pytest.approx(table.max_ms)


def test_matching_density_hits_the_target_latency() -> None:
    table = _table()
    target = quality_instanas.expected_latency(table, 0.37)
    assert quality_instanas.matching_density(table, target) == pytest.approx(0.37, abs=1e-3)


@pytest.mark.slow
def test_quick_run_reports_search_random_and_mbv2(capsys: pytest.CaptureFixture) -> None:
    quality_instanas.main(["--quick", "--threads", "1", "--seeds", "2"])
    doc = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    figures = doc["figures"]
    for key in ("seeds", "search_acc", "random_acc", "mbv2_acc", "search_minus_random_points", "ci95", "p_value",
                "search_latency_ms", "random_latency_ms", "mbv2_latency_ms", "search_minus_mbv2_points"):
        assert key in figures, key
    assert figures["seeds"] == [0, 1] and len(figures["search_acc"]) == 2
    assert doc["settings"]["method"] == "InstaNAS"
