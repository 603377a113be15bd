"""The benchmark harness: the JSON envelope, targets, the forked runner and the generated page.

The benchmarks themselves measure time and run for minutes, so they are not run here (``python -m benchmarks
--quick`` is their smoke run); this checks the machinery that turns their JSON into BENCHMARKS.md.
"""

from __future__ import annotations

import json
import os
import sys
import types
from pathlib import Path

import pytest

from benchmarks import __main__ as harness
from benchmarks.common import Bench, check_target, interleaved, ratios, spread
from benchmarks.report import render


def _fake_benchmark(name: str, fail: bool = False) -> None:
    """Register ``benchmarks.<name>`` in ``sys.modules`` (a fork inherits it) with a Bench-based ``main``."""

    def main(argv: list[str] | None = None) -> None:
        bench = Bench(name, "a fake benchmark")
        args = bench.parse(argv)
        print("noise before the JSON line")
        if fail:
            raise RuntimeError("boom")
        bench.figure("ratio", 1.0 / 3.0)
        bench.figure("quick_flag", int(args.quick))
        bench.target("ratio", "<=", 0.5)
        bench.note("a note")
        bench.emit()

    module = types.ModuleType(f"benchmarks.{name}")
    module.main = main  # type: ignore[attr-defined]
    sys.modules[module.__name__] = module


def test_spread_ratios_and_targets() -> None:
    s = spread([3.0, 1.0, 2.0, 4.0])
    assert (s["median"], s["min"], s["max"], s["n"]) == (2.5, 1.0, 4.0, 4)
    assert ratios([2.0, 3.0], [1.0, 2.0]) == [2.0, 1.5]
    with pytest.raises(ValueError):
        ratios([1.0], [1.0, 2.0])
    assert check_target("a <= 1.1", {"a": 1.0}) is True
    assert check_target("a < 1", {"a": 1.0}) is False
    assert check_target("a <= 1", {}) is None


def test_interleaved_alternates_the_order() -> None:
    calls: list[str] = []
    times = interleaved({"A": lambda: calls.append("A"), "B": lambda: calls.append("B")}, rounds=3, reps=1, warmup=0)
    assert calls == ["A", "B", "B", "A", "A", "B"] and all(len(v) == 3 for v in times.values())


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the forked runner needs os.fork")
def test_forked_runner_returns_the_last_json_line_and_reports_failures(capsys: pytest.CaptureFixture) -> None:
    _fake_benchmark("_fake_ok")
    _fake_benchmark("_fake_bad", fail=True)
    doc = harness.run_one("_fake_ok", ["--quick", "--threads", "1"])
    assert doc is not None and doc["name"] == "_fake_ok" and doc["figures"] == {"ratio": 0.3333, "quick_flag": 1}
    assert doc["settings"]["quick"] is True and doc["device"] == "cpu"
    assert harness.run_one("_fake_bad", []) is None
    err = capsys.readouterr().err
    assert "_fake_bad: FAILED (exit 1" in err and "RuntimeError: boom" in err


def test_report_renders_every_figure_and_marks_missed_targets(tmp_path: Path) -> None:
    bench = Bench("demo", "what it measures")
    bench.settings.update({"quick": False, "rounds": 5})
    bench.figure("speed_ratio", 1.234567)
    bench.figure("share_pct", 0.5)
    bench.target("speed_ratio", "<=", 1.1)
    bench.target("share_pct", "<", 1)
    bench.note("how to read it")
    results = tmp_path / "results"
    results.mkdir()
    (results / "demo.json").write_text(json.dumps(bench.document()))
    page = render(results, tmp_path / "BENCHMARKS.md").read_text()
    assert "| [demo](#demo) | full | 1/2 |" in page
    assert "| `speed_ratio` | 1.235 | <= 1.1 | **no** |" in page and "| `share_pct` | 0.5 | < 1 | yes |" in page
    assert "- how to read it" in page and "do not edit by hand" in page
