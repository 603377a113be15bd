"""``EvolutionSearch`` across a run's life: stopped by SIGTERM/SIGINT, resumed, finished by a resumed ``fit``, with
its progress counted in candidates and its summary printed last."""

from __future__ import annotations

import json
import os
import signal
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_nas.callbacks.evolution_search import EvolutionSearch
from lightning_nas.cli import NASTrainer
from lightning_nas.search import constraints as constraints_mod
from tests.helpers.tiny_space import TinyDataModule, TinyModule, synthetic_macs

SMALL = {"population": 6, "topk": 3, "mutations": 2, "crossovers": 2, "generations": 3, "calib_images": 16,
         "val_batches": 1}


@pytest.fixture(autouse=True)
def synthetic_costs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(constraints_mod, "cost_function",
                        lambda space, metric, table=None: partial(synthetic_macs, space))
    monkeypatch.setattr(constraints_mod, "cost_bounds", lambda space, metric, table=None: (8.0, 90.0))


def _trainer(root: Path, search: EvolutionSearch, cls: type[Trainer] = NASTrainer, **kwargs: Any) -> Trainer:
    defaults = dict(accelerator="cpu", devices=1, max_epochs=1, limit_train_batches=2, limit_val_batches=1,
                    num_sanity_val_steps=0, enable_progress_bar=False, enable_model_summary=False, logger=False,
                    default_root_dir=root)
    callbacks = [*kwargs.pop("callbacks", []), search]  # the search last, as in the recipes
    return cls(callbacks=callbacks, **{**defaults, **kwargs})


def _fit(root: Path, search: EvolutionSearch, ckpt_path: Path | None = None, **kwargs: Any) -> Trainer:
    torch.manual_seed(0)
    trainer = _trainer(root, search, **kwargs)
    trainer.fit(TinyModule(), TinyDataModule(), ckpt_path=ckpt_path)
    return trainer


def _signal_at(monkeypatch: pytest.MonkeyPatch, signum: int, at: int) -> dict[str, int]:
    """Deliver ``signum`` to this process while candidate ``at`` is being scored; count the candidates scored."""
    original, calls = EvolutionSearch.score_arch, {"n": 0}

    def scoring(self: EvolutionSearch, trainer: Trainer, pl_module: Any, arch: Any) -> float:
        calls["n"] += 1
        if calls["n"] == at:
            os.kill(os.getpid(), signum)
        return original(self, trainer, pl_module, arch)

    monkeypatch.setattr(EvolutionSearch, "score_arch", scoring)
    return calls


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_stops_at_the_next_candidate_and_the_resume_gives_the_same_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, signum: int, code: int
) -> None:
    full = EvolutionSearch(**SMALL, output_dir=str(tmp_path / "full"))
    _fit(tmp_path, full)

    out = tmp_path / "cut"
    with monkeypatch.context() as m:
        calls = _signal_at(m, signum, at=SMALL["population"] + 2)  # in the middle of generation 2
        with pytest.raises(SystemExit) as info:  # SearchInterrupted, a SIGTERMException
            _fit(tmp_path, EvolutionSearch(**SMALL, output_dir=str(out)))
    assert calls["n"] == SMALL["population"] + 2, "the search went on after the signal"
    assert info.value.code == code and type(info.value).__name__ == "SearchInterrupted"
    ckpt = out / "search_interrupted.ckpt"
    assert f"--ckpt_path {ckpt}" in str(info.value) and signal.Signals(signum).name in str(info.value)
    state = torch.load(ckpt, weights_only=True)
    saved = next(v for k, v in state["callbacks"].items() if k.startswith("EvolutionSearch"))
    assert saved["runs"][0]["generation"] == 1 and len(saved["cache"]) == SMALL["population"] + 2

    resumed = EvolutionSearch(**SMALL, output_dir=str(out))
    scored = _signal_at(monkeypatch, signum, at=-1)
    _fit(tmp_path, resumed, ckpt_path=ckpt)  # training was over: NASTrainer.fit finishes the search
    assert resumed.history == full.history and resumed.best == full.best
    assert scored["n"] == len(full.history) - (SMALL["population"] + 2)  # nothing scored twice
    assert json.loads((out / "best_arch.json").read_text())["arch"] == full.best["unconstrained"]["arch"]


def test_a_resumed_fit_finishes_a_search_that_was_cut_short(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    full = EvolutionSearch(**SMALL, output_dir=str(tmp_path / "full"))
    _fit(tmp_path, full)
    ckpts = tmp_path / "checkpoints"

    class Cut(RuntimeError):
        pass

    def dies(self: EvolutionSearch, *args: Any) -> float:
        raise Cut

    with monkeypatch.context() as m:
        m.setattr(EvolutionSearch, "score_arch", dies)
        with pytest.raises(Cut):  # the process dies during the search: last.ckpt is from the end of training
            _fit(tmp_path, EvolutionSearch(**SMALL, output_dir=str(tmp_path / "a")),
                 callbacks=[ModelCheckpoint(dirpath=ckpts, save_last=True)])

    resumed = EvolutionSearch(**SMALL, output_dir=str(tmp_path / "a"))
    _fit(tmp_path, resumed, ckpt_path=ckpts / "last.ckpt")
    assert resumed.best == full.best and (tmp_path / "a" / "best_arch.json").is_file()

    # a plain Trainer cannot run it (no search entry point) but says so instead of ending quietly
    plain = EvolutionSearch(**SMALL, output_dir=str(tmp_path / "b"))
    torch.manual_seed(0)
    trainer = _trainer(tmp_path, plain, cls=Trainer)
    with pytest.warns(UserWarning, match=r"no search ran.*lightning-nas search --config <recipe> --ckpt_path"):
        trainer.fit(TinyModule(), TinyDataModule(), ckpt_path=ckpts / "last.ckpt")
    assert plain.search_pending and not plain.best


def test_progress_counts_candidates_within_a_generation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fit(tmp_path, EvolutionSearch(**SMALL, output_dir=str(tmp_path)), enable_progress_bar=True)
    err = capsys.readouterr().err
    total = SMALL["population"] * SMALL["generations"]
    bars = [chunk for chunk in err.replace("\r", "\n").splitlines() if chunk.startswith("EvolutionSearch")]
    counts = {int(chunk.split("|")[-1].split("/")[0].strip()) for chunk in bars if f"/{total} [" in chunk}
    assert {1, 2, SMALL["population"] + 1} <= counts, bars[:8]  # candidate by candidate, not once per generation
    assert "cand" in bars[-1] and "generation=3/3" in bars[-1]


def test_summary_is_printed_after_the_progress_bars(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning.pytorch.callbacks import RichProgressBar

    events: list[str] = []
    stop = RichProgressBar._stop_progress
    monkeypatch.setattr(RichProgressBar, "_stop_progress", lambda self: (events.append("bar stopped"), stop(self)))
    monkeypatch.setattr("lightning_nas.callbacks.evolution_search.rank_zero_info",
                        lambda line, *a, **k: events.append(line))
    search = EvolutionSearch(**SMALL, output_dir=str(tmp_path))
    _fit(tmp_path, search, enable_progress_bar=True, callbacks=[RichProgressBar()])
    assert events[-1].startswith("Outputs: ") and "EvolutionSearch [unconstrained]: best arch" in events[-3]
    assert "bar stopped" in events and max(i for i, e in enumerate(events) if e == "bar stopped") < len(events) - 3
