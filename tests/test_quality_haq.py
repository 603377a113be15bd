"""``benchmarks.quality_haq``: uniform policies, and its quick path end to end."""

from __future__ import annotations

import json

import pytest

from benchmarks import quality_haq


def test_uniform_policy_pins_first_and_last() -> None:
    assert quality_haq.uniform_policy(4, 3) == [(8, 8), (3, 3), (3, 3), (8, 8)]
    assert quality_haq.mean_bits([(8, 8), (2, 4), (4, 6), (8, 8)]) == [3.0, 5.0]


@pytest.mark.slow
def test_quick_run_reports_the_paired_figures(capsys: pytest.CaptureFixture) -> None:
    quality_haq.main(["--quick", "--threads", "1"])
    doc = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    figures = doc["figures"]
    for key in ("seeds", "search_acc", "random_acc", "search_minus_random_points", "ci95", "p_value", "uniform_acc",
                "vs_uniform.search_minus_uniform_points", "vs_uniform.p_value"):
        assert key in figures
    assert figures["seeds"] == [0, 1] and len(figures["search_acc"]) == len(figures["uniform_acc"]) == 2
    budget = figures["budget_ratio"][0]
    assert all(r <= budget + 1e-3 for r in figures["cost_ratio.search"] + figures["cost_ratio.random"])
    assert doc["settings"]["method"] == "HAQ" and doc["targets"] == {"p_value": "p_value < 0.05"}
