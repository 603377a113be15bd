"""The quickstart through the ``lightning-nas`` console script: the summary is the last thing on screen; SIGTERM during
the search exits at once, non-zero, with the command that resumes it; that command gives the uninterrupted answer."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lightning_nas.callbacks.evolution_search import EvolutionSearch
from tests.test_cli import QUICK, QUICKSTART

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _args(root: Path) -> list[str]:
    return ["fit", "--config", QUICKSTART, *QUICK, f"--trainer.default_root_dir={root}"]


def test_quickstart_summary_is_last_and_sigterm_resumes_to_the_same_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from lightning_nas.cli import main

    # uninterrupted, as a user runs it: progress bars on, stdout and stderr in one stream
    straight = tmp_path / "straight"
    args = _args(straight)
    done = subprocess.run([sys.executable, "-m", "lightning_nas.cli", *args], cwd=tmp_path, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=500, env={**os.environ, "COLUMNS": "120"})
    assert done.returncode == 0, done.stdout[-3000:]
    lines = [line for line in done.stdout.replace("\r", "\n").splitlines() if line.strip()]
    assert lines[-1].startswith("Outputs: ") and "EvolutionSearch [macs_le_3.5M]: best arch scores" in lines[-3], \
        lines[-6:]
    expected = json.loads((straight / "best_arch.json").read_text())["arch"]

    # SIGTERM while the second generation is scored
    original, calls = EvolutionSearch.score_arch, {"n": 0}

    def scoring(self: EvolutionSearch, *a: Any) -> float:
        calls["n"] += 1
        if calls["n"] == 6:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, *a)

    cut = tmp_path / "cut"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(EvolutionSearch, "score_arch", scoring)
    monkeypatch.setattr(sys, "argv", ["lightning-nas", *_args(cut)])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 143 and calls["n"] == 6
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lightning-nas: ")]
    assert err[0].startswith("lightning-nas: EvolutionSearch stopped by SIGTERM after 6 scored candidates"), err
    assert err[1].startswith("lightning-nas: resume: lightning-nas fit --config ")
    assert not (cut / "best_arch.json").exists()

    # the printed command finishes the search (training is not repeated) with the uninterrupted answer
    resume = shlex.split(err[1].removeprefix("lightning-nas: resume: "))
    monkeypatch.setattr(EvolutionSearch, "score_arch", original)
    monkeypatch.setattr(sys, "argv", resume)
    main()
    assert json.loads((cut / "best_arch.json").read_text())["arch"] == expected
