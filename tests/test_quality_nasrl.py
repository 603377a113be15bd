"""``benchmarks.quality_nasrl``: its quick path runs end to end and writes the quality figures."""

from __future__ import annotations

import json

import pytest

from benchmarks import quality_nasrl

KEYS = ("seeds", "search_acc", "random_acc", "search_minus_random_points", "ci95", "p_value", "last_mean_val",
        "random_mean_val")


@pytest.mark.slow
def test_quick_run_reports_the_paired_figures(capsys: pytest.CaptureFixture) -> None:
    quality_nasrl.main(["--quick", "--threads", "1", "--seeds", "2"])
    doc = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    figures = doc["figures"]
    assert all(k in figures for k in KEYS)
    assert figures["seeds"] == [0, 1] and len(figures["search_acc"]) == len(figures["random_acc"]) == 2
    assert all(0.0 <= a <= 1.0 for a in figures["search_acc"] + figures["random_acc"])
    assert doc["settings"]["method"] == "NAS-RL" and doc["targets"] == {"p_value": "p_value < 0.05"}
