"""``python -m benchmarks.gpu_smoke`` in its CPU mode: one line per recipe and a summary, exit 1 on a failure."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from benchmarks import gpu_smoke


@pytest.mark.slow
def test_cpu_mode_fits_recipes_in_subprocesses_and_prints_a_table(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    code = gpu_smoke.main(["--device", "cpu", "--only", "quickstart", "retrain", "--jobs", "2",
                           "--workdir", str(tmp_path)])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0, "\n".join(out)
    assert out[0].startswith("2 recipes, accelerator=cpu, precision=32, 2 at a time")
    rows = [line for line in out if re.match(r"^(ok  |FAIL) +\d+\.\d s  recipes/", line)]
    assert sorted(r.split()[-1] for r in rows) == ["recipes/quickstart.yaml", "recipes/retrain.yaml"]
    assert re.match(r"^2/2 recipes ok in \d+ s$", out[-1])


def test_a_failed_recipe_is_named_with_its_reason_and_fails_the_run(capsys: pytest.CaptureFixture[str]) -> None:
    assert gpu_smoke.main(["--device", "cpu", "--only", "quickstart", "--timeout", "0.01"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "recipes/quickstart.yaml  timed out after 0 s" in out
    assert out.strip().splitlines()[-1].endswith("failed: recipes/quickstart.yaml")
    assert gpu_smoke.main(["--only", "no-such-recipe"]) == 2
