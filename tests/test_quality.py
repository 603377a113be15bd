"""The shared pieces of the search-quality benchmarks: paired statistics on known numbers, the regime's splits."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from benchmarks.common import Bench
from benchmarks.quality_common import Regime, load_splits, paired_stats, quality_figures, spread_and_noise
from benchmarks.report import render


def test_paired_stats_on_known_numbers() -> None:
    # differences 1, 2, 3 points: mean 2, sd 1, t = 2·√3 = 3.464 on 2 degrees of freedom
    stats = paired_stats([0.81, 0.72, 0.93], [0.80, 0.70, 0.90])
    assert stats["differences_points"] == pytest.approx([1.0, 2.0, 3.0])
    assert stats["search_minus_random_points"] == pytest.approx(2.0)
    assert stats["mean_points"] == pytest.approx(2.0)
    half = 4.302652729911275 / math.sqrt(3)  # t_{0.975, 2} · sd / √n
    assert stats["ci95"] == pytest.approx([2.0 - half, 2.0 + half])
    assert stats["p_value"] == pytest.approx(0.037089, abs=1e-5)  # one-sided, from the t distribution
    assert stats["wins"] == 3


def test_paired_stats_direction_and_degenerate_cases() -> None:
    worse = paired_stats([0.70, 0.70, 0.90], [0.81, 0.72, 0.93])
    assert worse["search_minus_random_points"] < 0 and worse["p_value"] > 0.85 and worse["wins"] == 0
    assert paired_stats([0.9, 0.8], [0.8, 0.7])["p_value"] == 0.0  # identical gains: no spread, certain
    assert paired_stats([0.8, 0.8], [0.8, 0.8])["p_value"] == 0.5
    assert math.isnan(paired_stats([0.9], [0.8])["p_value"])
    with pytest.raises(ValueError, match="one search and one random"):
        paired_stats([0.9, 0.8], [0.8])


def test_spread_and_noise() -> None:
    out = spread_and_noise([0.80, 0.90, 0.85], [[0.80, 0.82], [0.90, 0.88]])
    assert out["arch_spread_points"] == pytest.approx(5.0)
    assert out["seed_noise_points"] == pytest.approx(math.sqrt(2.0))
    assert out["spread_over_noise"] == pytest.approx(5.0 / math.sqrt(2.0))


def test_regime_splits_are_disjoint_and_fixed() -> None:
    regime = Regime(train_images=100, val_images=50, input_size=8, noise_std=0.5)
    a, b = load_splits(regime), load_splits(regime)
    # test: the official 360 images, then the 1,437 - 150 training-set images neither train nor val holds
    assert a.train[0].shape == (100, 3, 8, 8) and a.val[0].shape == (50, 3, 8, 8) and a.test[0].shape[0] == 360 + 1287
    assert (a.train[0] == b.train[0]).all() and (a.val[1] == b.val[1]).all() and (a.test[0] == b.test[0]).all()
    rows = {tuple(x.flatten().tolist()) for x in a.train[0]}
    val = {tuple(x.flatten().tolist()) for x in a.val[0]}
    extra = {tuple(x.flatten().tolist()) for x in a.test[0][360:]}
    assert not rows & val and not rows & extra and not val & extra
    official = load_splits(replace(regime, test_from_pool=False))
    assert official.test[0].shape[0] == 360 and torch.equal(official.test[0], a.test[0][:360])
    assert torch.equal(official.train[0], a.train[0]) and torch.equal(official.val[0], a.val[0])
    with pytest.raises(ValueError, match="exceeds"):
        load_splits(Regime(train_images=1400, val_images=400))


def test_report_puts_a_search_quality_row_per_method_on_top(tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    for name, method, search in (("quality_demo", "Demo", [0.81, 0.72, 0.93]), ("quality_other", None, [0.8] * 3)):
        bench = Bench(name, "a quality benchmark")
        bench.settings.update({"quick": False, "regime": "digits 16 px", "budget": "48 candidates"})
        if method:
            bench.settings["method"] = method
        quality_figures(bench, [0, 1, 2], search, [0.80, 0.70, 0.90])
        (results / f"{name}.json").write_text(json.dumps(bench.document()))
    other = Bench("aaa_speed", "not a quality benchmark")
    other.settings["quick"] = False
    (results / "aaa_speed.json").write_text(json.dumps(other.document()))
    page = render(results, tmp_path / "BENCHMARKS.md").read_text()
    assert page.index("## Search quality") < page.index("## quality_demo") < page.index("## aaa_speed")
    quality = page.split("## Search quality")[1].split("Machine:")[0]
    row = "| [Demo](#quality_demo) | +2.00 | [-0.48, +4.48] | **0.0371** | 3 | digits 16 px | 48 candidates | full |"
    assert row in quality and "| [other](#quality_other) | +0.00 | [-24.84, +24.84] | 0.5 |" in quality
    assert "aaa_speed" not in quality


def test_stand_alone_trainings_in_worker_processes_match_in_process() -> None:
    """``set_workers(2)`` trains in spawned processes: the same accuracies as one by one here, for an exported
    SPOS net (standalone_runs) and a quantized HAQ net fine-tuned as given (reinit False), and the caller's global
    random stream is left where it was."""
    from benchmarks import quality_common as qc
    from benchmarks.quality_haq import SPACE as HAQ_SPACE
    from benchmarks.quality_spos import make_space
    from lightning_nas.modules.quantized import quant_layers, quantize_network
    from lightning_nas.spaces import MobileNetSpace

    regime = replace(Regime(), repeats=2).smoke(repeats=2, images=32)
    regime = replace(regime, epochs=1)
    splits = load_splits(regime)
    space = make_space(splits)
    arch = space.sample(torch.Generator().manual_seed(3))
    torch.manual_seed(0)  # the quantized net's weights come from the supernet's initialisation
    mobile = MobileNetSpace(splits.num_classes, splits.input_size, **HAQ_SPACE)
    qnet = quantize_network(mobile.export(dict.fromkeys(mobile.decisions(), "k3_e6")))
    for layer in quant_layers(qnet).values():
        layer.wbits, layer.abits = 4, 4

    def measure() -> tuple[list[float], list[float], torch.Tensor]:
        torch.manual_seed(11)
        runs = qc.standalone_runs(lambda: space.export(arch), splits, regime, seed=5)
        tuned = qc.train_and_score([(qnet, 7, False), (qnet, 8, False)], splits, regime)
        return runs, tuned, torch.rand(3)

    try:
        qc.set_workers(1)
        here = measure()
        qc.set_workers(2)
        there = measure()
    finally:
        qc.set_workers(1)
    assert here[0] == there[0] and here[1] == there[1]
    assert here[1] != [here[1][0]] * 2 or here[0] != [here[0][0]] * 2  # the seeds differ, so do (some) runs
    assert torch.equal(here[2], there[2])
