"""``benchmarks.quality_parsec``: coupled prior/uniform draws, and its quick path end to end."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import quality_parsec

DECISIONS = {"a": ["x", "y", "z"], "b": [0, 1], "c": ["p", "q", "r", "s"]}


def test_a_uniform_prior_draws_the_uniform_archs() -> None:
    logits = [torch.zeros(len(v)) for v in DECISIONS.values()]
    prior, uniform = quality_parsec.coupled_archs(DECISIONS, logits, 20, torch.Generator().manual_seed(0))
    assert prior == uniform and len({tuple(a.values()) for a in uniform}) > 1


def test_a_peaked_prior_draws_its_mode_and_uniform_draws_stay_uniform() -> None:
    logits = [torch.tensor([0.0, 30.0, 0.0]), torch.tensor([30.0, 0.0]), torch.tensor([0.0, 0.0, 0.0, 30.0])]
    prior, uniform = quality_parsec.coupled_archs(DECISIONS, logits, 400, torch.Generator().manual_seed(1))
    assert all(a == {"a": "y", "b": 0, "c": "s"} for a in prior)
    counts = [sum(a["c"] == v for a in uniform) for v in DECISIONS["c"]]
    assert min(counts) > 70  # 100 expected each


@pytest.mark.slow
def test_quick_run_reports_the_paired_figures(capsys: pytest.CaptureFixture) -> None:
    quality_parsec.main(["--quick", "--threads", "1"])
    doc = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    figures = doc["figures"]
    for key in ("seeds", "search_acc", "random_acc", "search_minus_random_points", "ci95", "p_value",
                "prior_entropy_over_uniform", "default_prior_lr.prior_entropy_over_uniform"):
        assert key in figures
    assert figures["seeds"] == [0, 1] and len(figures["search_acc"]) == len(figures["random_acc"]) == 2
    assert figures["default_prior_lr.prior_entropy_over_uniform"] > 0.99  # 2 steps at the default LR: unmoved
    assert doc["settings"]["method"] == "PARSEC" and doc["targets"] == {"p_value": "p_value < 0.05"}
