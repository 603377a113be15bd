"""ArchLogger: works for any module with arch_probabilities(); heatmap + JSON per epoch, entropy, wandb table."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger

from lightning_nas.callbacks import arch_logger
from lightning_nas.callbacks.arch_logger import ArchLogger, mean_entropy
from tests.helpers.tiny_space import TinyDataModule, TinyModule


class ProbModule(TinyModule):
    """Not a ProxylessNAS module: any module offering arch_probabilities() is enough."""

    def arch_probabilities(self) -> dict[str, dict[Any, float]]:
        return {"block0.op": {"conv1x1": 0.5, "conv3x3": 0.5}, "mix.width": {0.5: 1.0, 1.0: 0.0}}


def _fit(tmp_path, module, callback, logger=None) -> Trainer:
    trainer = Trainer(max_epochs=2, accelerator="cpu", logger=logger or False, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path,
                      limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=0, callbacks=[callback])
    trainer.fit(module, datamodule=TinyDataModule())
    return trainer


def test_heatmap_json_and_entropy_every_epoch(tmp_path):
    logger = CSVLogger(tmp_path)
    trainer = _fit(tmp_path, ProbModule(), ArchLogger(), logger)
    folder = tmp_path / "lightning_logs" / "version_0"
    assert trainer.log_dir == str(folder)
    for epoch in (0, 1):
        assert (folder / f"arch_probs_epoch{epoch}.png").stat().st_size > 0
        doc = json.loads((folder / f"arch_probs_epoch{epoch}.json").read_text())
        assert doc == {"epoch": epoch, "probabilities": {"block0.op": {"conv1x1": 0.5, "conv3x3": 0.5},
                                                         "mix.width": {"0.5": 1.0, "1.0": 0.0}}}
    rows = (folder / "metrics.csv").read_text().splitlines()
    assert "arch/entropy" in rows[0]
    assert mean_entropy(ProbModule().arch_probabilities()) == pytest.approx(math.log(2) / 2)


def test_module_without_probabilities_is_refused(tmp_path):
    with pytest.raises(TypeError, match="arch_probabilities"):
        _fit(tmp_path, TinyModule(), ArchLogger())


def test_every_n_epochs_and_dirpath(tmp_path):
    _fit(tmp_path, ProbModule(), ArchLogger(every_n_epochs=2, dirpath=str(tmp_path / "maps")))
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == ["arch_probs_epoch1.json",
                                                                    "arch_probs_epoch1.png"]


def test_wandb_run_gets_table_and_image(tmp_path, monkeypatch):
    logged: list[dict[str, Any]] = []

    class FakeRun:
        def log(self, data: dict[str, Any]) -> None:
            logged.append(data)

    monkeypatch.setattr(arch_logger, "live_wandb_run", lambda logger: FakeRun())
    _fit(tmp_path, ProbModule(), ArchLogger(), CSVLogger(tmp_path))
    import wandb

    assert len(logged) == 2
    assert isinstance(logged[0]["arch/probabilities"], wandb.Table)
    assert isinstance(logged[0]["arch/probabilities_map"], wandb.Image)
    assert len(logged[0]["arch/probabilities"].data) == 4


def test_logging_a_heatmap_leaves_the_process_matplotlib_backend_alone(tmp_path):
    import matplotlib

    before = matplotlib.get_backend()
    matplotlib.use("svg")  # a user's choice, which ArchLogger must keep
    try:
        _fit(tmp_path, ProbModule(), ArchLogger())
        assert (tmp_path / "arch_probs_epoch1.png").stat().st_size > 1000
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(before)
