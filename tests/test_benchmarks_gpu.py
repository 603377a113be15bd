"""The GPU benchmark (``benchmarks/gpu_speed.py``) in its CPU smoke mode, and how the harness files GPU results.

A GPU benchmark that ran without CUDA is a smoke run: the harness keeps its JSON out of ``benchmarks/results/``, and
the page's "GPU" section says "not measured" until a JSON from a CUDA device is there. No figure is checked for its
value here (speed claims belong to the benchmarks); only that each is produced.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from benchmarks import __main__ as harness
from benchmarks.common import Bench
from benchmarks.report import gpu_section, render

fork_only = pytest.mark.skipif(not hasattr(os, "fork"), reason="runs the benchmark in a forked child (os.fork)")

HEADLINE = ["evolution_s_per_1000_candidates", "fit_over_raw_step", "supernet_over_compiled_exported"]


def run_smoke(*extra: str) -> dict[str, Any]:
    """``benchmarks.gpu_speed.main(["--quick", *extra])`` in a forked child (its torch settings stay there)."""
    code, stdout, stderr = harness._forked("gpu_speed", ["--quick", "--threads", "1", *extra])
    assert code == 0, stderr[-3000:]
    doc = json.loads(stdout.strip().splitlines()[-1])
    assert doc["name"] == "gpu_speed" and doc["figures"]["failed_sections"] == [], doc["notes"]
    return doc


@fork_only
def test_smoke_run_of_the_cheap_sections_reports_their_figures() -> None:
    doc = run_smoke("--only-sections", "loader", "scoring")
    f, s = doc["figures"], doc["settings"]
    assert s["smoke"] is True and s["device"] == doc["device"] == "cpu" and s["device_name"]
    for key in ("loader_images_per_s", "loader_on_device_images_per_s", "on_device_loader_over_loader",
                "evolution_s_per_1000_candidates", "evolution_s_per_1000_candidates_best",
                "score_s_per_candidate.calib16", "score_speedup_calib64_over_calib16"):
        assert isinstance(f[key], (int, float)) and f[key] > 0, key
    assert f["evolution_best_variant"] in ("calib16", "calib32", "calib64", "calib64_val64")
    assert f["score_s_per_candidate.calib64_val64"] > 0
    assert set(s["section_wall_s"]) == {"loader", "scoring"}
    assert "evolution_s_per_1000_candidates" in doc["targets"]


@pytest.mark.slow
@fork_only
def test_smoke_run_of_every_section_reports_the_issue_figures() -> None:
    doc = run_smoke()
    f = doc["figures"]
    for key in [*HEADLINE, "fit_on_device_over_raw_step", "fit_on_device_over_fit", "supernet_over_exported",
                "fit_on_device_no_bar_over_raw_step", "no_bar_over_bar",
                "raw_step_images_per_s", "fit_images_per_s", "fit_on_device_images_per_s",
                "compiled_exported_step_images_per_s", "compile_s_per_arch", "loader_over_raw_step"]:
        assert isinstance(f[key], (int, float)) and f[key] > 0, key
    assert len(f["fit_over_raw_step_min_max"]) == 2
    assert set(doc["settings"]["section_wall_s"]) == {"fit", "loader", "scoring", "steps"}
    assert doc["settings"]["compile_backend"] == "eager"  # inductor only on CUDA


def test_gpu_benchmarks_run_only_when_named_or_in_the_smoke_run() -> None:
    names = ["data_throughput", "gpu_speed", "supernet_overhead"]
    assert harness.chosen(names, None, gpu=False, quick=False) == ["data_throughput", "supernet_overhead"]
    assert harness.chosen(names, None, gpu=False, quick=True) == names
    assert harness.chosen(names, None, gpu=True, quick=False) == ["gpu_speed"]
    assert harness.chosen(names, ["gpu_speed"], gpu=False, quick=False) == ["gpu_speed"]
    assert "gpu_speed" in harness.discover() and "gpu_smoke" not in harness.discover()


def _doc(name: str, device: str, **figures: float) -> dict[str, Any]:
    bench = Bench(name, "a GPU benchmark")
    bench.settings.update({"quick": False, "device": device, "device_name": "Some GPU", "precision": "bf16-mixed"})
    for key, value in figures.items():
        bench.figure(key, value)
    bench.target("fit_over_raw_step", ">=", 0.9)
    return bench.document()


def test_a_cpu_run_of_a_gpu_benchmark_never_reaches_the_results_folder(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    here = tmp_path / "benchmarks"
    here.mkdir()
    (here / "gpu_fake.py").write_text("")
    monkeypatch.setattr(harness, "HERE", here)
    device = {"now": "cpu"}
    monkeypatch.setattr(harness, "run_one",
                        lambda name, extra: _doc(name, device["now"], fit_over_raw_step=0.8))
    assert harness.main(["--only", "gpu_fake"]) == 0
    assert not (here / "results" / "gpu_fake.json").exists()
    assert json.loads((here / "results_quick" / "gpu_fake.json").read_text())["device"] == "cpu"
    page = (tmp_path / "BENCHMARKS.md").read_text()
    assert "## GPU" in page and "**Not measured**" in page
    assert "| `Trainer.fit` epoch / raw step, default loader | `fit_over_raw_step` | not measured | >= 0.9 |  |" in page

    device["now"] = "cuda"
    assert harness.main(["--gpu"]) == 0
    assert json.loads((here / "results" / "gpu_fake.json").read_text())["device"] == "cuda"
    page = (tmp_path / "BENCHMARKS.md").read_text()
    assert "**Not measured**" not in page and "[gpu_fake](#gpu_fake): Some GPU, bf16-mixed" in page
    assert "| `fit_over_raw_step` | 0.8 | >= 0.9 | **no** |" in page


def test_gpu_section_shows_a_cuda_runs_figures_with_their_spread(tmp_path: Path) -> None:
    doc = _doc("gpu_speed", "cuda", fit_over_raw_step=0.95, evolution_s_per_1000_candidates=250.0)
    doc["figures"]["fit_over_raw_step_min_max"] = [0.9, 0.97]
    text = "\n".join(gpu_section([doc]))
    assert "| `fit_over_raw_step` | 0.95 (0.9–0.97) | >= 0.9 | yes |" in text
    assert "| `evolution_s_per_1000_candidates` | 250 | <= 300 | yes |" in text  # the issue's goal as target
    assert "| `supernet_over_compiled_exported` | not measured | >= 0.9 |  |" in text
    cpu_only = "\n".join(gpu_section([_doc("gpu_speed", "cpu", fit_over_raw_step=0.95)]))
    assert "**Not measured**" in cpu_only and "0.95" not in cpu_only
    (tmp_path / "results").mkdir()
    assert "## GPU" in render(tmp_path / "results", tmp_path / "page.md").read_text()  # even with no results
