"""``benchmarks.calibration_ranking``: its agreement measures, and its quick path end to end."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from benchmarks import __main__ as harness
from benchmarks import calibration_ranking as cr


def test_agreement_measures_rank_and_top_k() -> None:
    ref = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]
    same = cr.agreement(ref, ref)
    assert same["tau"] == pytest.approx(1.0) and same["top1_regret_points"] == 0 and same["top5_overlap"] == 1
    swapped = cr.agreement([0.8, 0.9, 0.7, 0.6, 0.5, 0.4], ref)
    assert swapped["tau"] < 1 and swapped["top1_regret_points"] == pytest.approx(10.0)
    assert swapped["top1_same"] == 0 and swapped["mean_abs_diff_points"] == pytest.approx(10 / 3)
    assert math.isnan(cr.tau([0.5, 0.5, 0.5], [0.1, 0.2, 0.3]))  # a supernet still at chance: no ranking
    assert cr.best_first([0.5, 0.7, 0.7]) == [1, 2, 0]  # ties by draw order, as search.top_k


def test_smallest_count_reaching_a_bound() -> None:
    assert cr.smallest({"32": 0.8, "64": 0.96, "128": 0.95, "640": float("nan")}, 0.95) == 64
    assert cr.smallest({"32": 0.8, "64": 0.9}, 0.95) is None


def test_batches_are_whole_and_the_library_draw_is_the_calibration_loader() -> None:
    from lightning_nas.datamodules import DigitsDataModule
    from lightning_nas.search import collect_inputs

    pool = torch.arange(100.0).view(100, 1)
    assert [len(b) for b in cr.batches_of(pool, 40, 16)] == [16, 16, 16]  # ceil to whole batches
    dm = DigitsDataModule(batch_size=32, seed=42)
    library = torch.cat(collect_inputs(dm.calibration_dataloader(), 64, "cpu"))
    assert torch.equal(cr.draw_pool(dm, 64, 0), library)
    other = cr.draw_pool(dm, 64, 1)
    assert other.shape == library.shape and not torch.equal(other, library)
    assert torch.equal(other, cr.draw_pool(dm, 64, 1))  # seeded


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "fork"), reason="runs the benchmark in a forked child (os.fork)")
def test_quick_run_reports_the_ranking_figures() -> None:
    code, stdout, stderr = harness._forked("calibration_ranking", ["--quick", "--threads", "1"])
    assert code == 0, stderr[-3000:]
    doc = json.loads(stdout.strip().splitlines()[-1])
    f = doc["figures"]
    assert doc["name"] == "calibration_ranking" and doc["settings"]["quick"] is True
    counts = [str(n) for n in doc["settings"]["calib_images"]]
    assert list(f["kendall_tau_by_calib_images"]) == [*counts, "256"]  # the last: the reference's own noise
    assert f["kendall_tau_by_calib_images"]["256"] == f["reference_self_tau"]
    assert set(f["s_per_candidate_by_calib_images"]) == {*counts, "256"}
    assert all(t > 0 for t in f["s_per_candidate_by_calib_images"].values())
    for key in ("top1_regret_points_by_calib_images", "top5_overlap_by_calib_images", "kendall_tau_by_val_images",
                "kendall_tau_library_draw_by_calib_images", "kendall_tau_by_calib_batch_at_128",
                "smallest_calib_images_tau_095"):
        assert key in f
    assert doc["targets"] == {"kendall_tau_calib128": "kendall_tau_calib128 >= 0.95"}
