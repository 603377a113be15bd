"""``EvolutionSearch`` on a tiny supernet under a real Trainer (CPU)."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lightning_nas import load_arch
from lightning_nas.callbacks.evolution_search import EvolutionSearch
from lightning_nas.search import constraints as constraints_mod
from tests.helpers.tiny_space import TinyDataModule, TinyModule, synthetic_macs

SMALL = {"population": 6, "topk": 3, "mutations": 2, "crossovers": 2, "generations": 3, "calib_images": 16,
         "val_batches": 1}


@pytest.fixture
def synthetic_costs(monkeypatch):
    """Table-free costs: a new TinySpace per test would otherwise build its cost tables each time."""
    monkeypatch.setattr(constraints_mod, "cost_function",
                        lambda space, metric, table=None: partial(synthetic_macs, space))
    monkeypatch.setattr(constraints_mod, "cost_bounds", lambda space, metric, table=None: (8.0, 90.0))


def fit(callback: EvolutionSearch, root: Path, logger=False, **trainer_kwargs) -> Trainer:
    torch.manual_seed(0)
    kwargs = dict(accelerator="cpu", devices=1, max_epochs=1, limit_train_batches=2, limit_val_batches=1,
                  num_sanity_val_steps=0, enable_checkpointing=False, enable_progress_bar=False,
                  enable_model_summary=False, logger=logger, default_root_dir=root, callbacks=[callback])
    trainer = Trainer(**{**kwargs, **trainer_kwargs})
    trainer.fit(TinyModule(), TinyDataModule())
    return trainer


def test_outputs_written_and_loadable(tmp_path):
    search = EvolutionSearch(**SMALL, constraints=[{"metric": "macs", "max": 60000}], output_dir=str(tmp_path / "out"))
    trainer = fit(search, tmp_path, logger=CSVLogger(tmp_path))
    out = tmp_path / "out"
    module_space = trainer.lightning_module.space
    arch = load_arch(out / "best_arch.json", module_space)
    doc = json.loads((out / "best_arch.json").read_text())
    assert arch == search.best["macs_le_60K"]["arch"] and doc["costs"]["macs"] <= 60000
    run = search.run_dir
    assert run is not None and run.parent == out and load_arch(run / "best_arch.json", module_space) == arch
    assert doc["run_folder"] == str(run) and doc["settings"] == module_space.settings
    lines = (run / "search_history.jsonl").read_text().splitlines()
    assert len(lines) == len(search.history) == len(search._cache) == 18
    assert all(json.loads(line)["costs"]["macs"] <= 60000 for line in lines)
    assert (run / "search_pareto.png").stat().st_size > 1000
    assert "| constraint | rank | score" in (run / "search_topk.md").read_text()
    metrics = (Path(trainer.logger.log_dir) / "metrics.csv").read_text()
    assert "search/best_acc" in metrics and "search/best_macs" in metrics


def test_supernet_state_restored_after_search(tmp_path, synthetic_costs):
    class Snapshot(EvolutionSearch):
        def on_train_end(self, trainer, pl_module):
            self.before = {k: v.clone() for k, v in pl_module.state_dict().items()}
            self.arch_before, self.mode_before = pl_module.space.active_arch, pl_module.training
            super().on_train_end(trainer, pl_module)

    search = Snapshot(**SMALL, output_dir=str(tmp_path))
    trainer = fit(search, tmp_path)
    module = trainer.lightning_module
    assert all(torch.equal(module.state_dict()[k], v) for k, v in search.before.items())
    assert module.space.active_arch == search.arch_before and module.training == search.mode_before


def test_several_constraints_one_best_each_no_arch_scored_twice(tmp_path, monkeypatch, synthetic_costs):
    scored: list[str] = []
    original = EvolutionSearch.score_arch

    def counting(self, trainer, pl_module, arch):
        scored.append(json.dumps(arch, sort_keys=True))
        return original(self, trainer, pl_module, arch)

    monkeypatch.setattr(EvolutionSearch, "score_arch", counting)
    cons = [{"metric": "macs", "max": 40}, {"metric": "macs", "max": 60, "name": "loose"}]
    search = EvolutionSearch(**SMALL, constraints=cons, output_dir=str(tmp_path))
    fit(search, tmp_path)
    assert len(scored) == len(set(scored)) == len(search._cache)
    assert set(search.best) == {"macs_le_40", "loose"}
    assert search.best["macs_le_40"]["costs"]["macs"] <= 40 and search.best["loose"]["costs"]["macs"] <= 60
    for run, bound in zip(search._runs, (40, 60)):
        assert all(r["costs"]["macs"] <= bound for r in run.history)
    assert (tmp_path / "best_arch_macs_le_40.json").is_file() and (tmp_path / "best_arch_loose.json").is_file()


def test_impossible_constraint_fails_before_training(tmp_path, synthetic_costs):
    search = EvolutionSearch(**SMALL, constraints=[{"metric": "macs", "max": 5}])
    with pytest.raises(ValueError, match=r"macs_le_5.*ranges from 8 \(8\) to 90 \(90\)"):
        fit(search, tmp_path)


def test_module_without_space_is_refused(tmp_path):
    class NoSpace(TinyModule):
        def __init__(self):
            super().__init__()
            self.net = self.space
            del self.space

    trainer = Trainer(accelerator="cpu", logger=False, callbacks=[EvolutionSearch(**SMALL)], max_epochs=1,
                      enable_progress_bar=False)
    with pytest.raises(MisconfigurationException, match="EvolutionSearch needs a module with a `space`.*NoSpace"):
        trainer.fit(NoSpace(), TinyDataModule())


class Interrupt(RuntimeError):
    pass


def test_resume_after_interruption_equals_uninterrupted_run(tmp_path, monkeypatch, synthetic_costs):
    full = EvolutionSearch(**SMALL, output_dir=str(tmp_path / "full"))
    fit(full, tmp_path)

    calls = {"n": 0}
    original = EvolutionSearch.score_arch

    def dies_in_generation_two(self, trainer, pl_module, arch):
        calls["n"] += 1
        if calls["n"] > SMALL["population"] + 3:
            raise Interrupt
        return original(self, trainer, pl_module, arch)

    with monkeypatch.context() as m:
        m.setattr(EvolutionSearch, "score_arch", dies_in_generation_two)
        with pytest.raises(Interrupt):
            fit(EvolutionSearch(**SMALL, output_dir=str(tmp_path / "cut")), tmp_path)
    saved = json.loads((tmp_path / "cut" / "search_state.json").read_text())
    assert saved["runs"][0]["generation"] == 1

    resumed = EvolutionSearch(**SMALL, output_dir=str(tmp_path / "cut"))
    fit(resumed, tmp_path)
    assert resumed.history == full.history
    assert resumed.best == full.best


def test_checkpoint_state_is_primitive(tmp_path, synthetic_costs):
    search = EvolutionSearch(**SMALL, output_dir=str(tmp_path))
    trainer = fit(search, tmp_path)
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=True)
    state = ckpt["callbacks"][search.state_key]
    assert state["runs"][0]["generation"] == SMALL["generations"]
    again = EvolutionSearch(**SMALL, output_dir=str(tmp_path / "elsewhere"))
    again.load_state_dict(state)
    fit(again, tmp_path)  # resumed from the checkpoint: nothing left to score
    assert again.history == search.history


def test_random_strategy_same_budget(tmp_path, synthetic_costs):
    search = EvolutionSearch(**SMALL, strategy="random", output_dir=str(tmp_path))
    fit(search, tmp_path)
    assert len(search.history) == SMALL["population"] * SMALL["generations"]


def test_fast_dev_run_minimal_search(tmp_path, synthetic_costs):
    search = EvolutionSearch(output_dir=str(tmp_path / "out"))
    fit(search, tmp_path, fast_dev_run=True)
    assert len(search.history) == 2 and search.best
    assert not (tmp_path / "out").exists()


def test_runs_on_validate_when_asked(tmp_path, synthetic_costs):
    search = EvolutionSearch(**SMALL, output_dir=str(tmp_path), run_on_validate=True)
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, limit_val_batches=1,
                      enable_model_summary=False, callbacks=[search])
    trainer.validate(TinyModule(), TinyDataModule())
    assert (tmp_path / "best_arch.json").is_file()


class RecordingSearch(EvolutionSearch):
    """Writes each rank's history where the test can read it (spawned ranks share no memory)."""

    def search(self, trainer: Trainer, pl_module: LightningModule):
        best = super().search(trainer, pl_module)
        path = Path(self.output_dir) / f"rank{trainer.global_rank}.json"
        path.write_text(json.dumps({"history": self.history, "best": best, "cache": len(self._cache)}))
        return best


@pytest.mark.slow
def test_ddp_ranks_agree(tmp_path):
    search = RecordingSearch(**{**SMALL, "generations": 2}, output_dir=str(tmp_path))
    fit(search, tmp_path, devices=2, strategy="ddp_spawn_find_unused_parameters_true")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1]
    assert len(ranks[0]["history"]) == ranks[0]["cache"] == 2 * SMALL["population"]
    assert load_arch(tmp_path / "best_arch.json")["block0.op"] == ranks[0]["best"]["unconstrained"]["arch"]["block0.op"]


class SplitDataModule(TinyDataModule):
    """TinyDataModule with a test split, for ``test_best``."""

    def test_dataloader(self):  # noqa: D102
        return torch.utils.data.DataLoader(self._data(24, 2), batch_size=self.batch_size)


def test_best_arch_scored_on_the_test_split_after_the_search(tmp_path, synthetic_costs, caplog):
    search = EvolutionSearch(**SMALL, output_dir=str(tmp_path), test_best=True)
    trainer = Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=False,
                      num_sanity_val_steps=0, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=tmp_path, callbacks=[search])
    with caplog.at_level("INFO"):
        trainer.fit(TinyModule(), SplitDataModule())
    (name,) = search.best
    assert 0.0 <= search.test_scores[name] <= 1.0
    assert json.loads((tmp_path / "best_arch.json").read_text())["test_acc"] == search.test_scores[name]
    assert "median of the" in caplog.text and "on the test split" in caplog.text
