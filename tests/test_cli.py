"""The lightning-nas CLI: bad input fails before training with a clear message; W&B offline leaves a run folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lightning_nas.cli import cli_main

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "recipes" / "quickstart.yaml")


def _fails(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as info:
        cli_main(args)
    assert info.value.code != 0
    captured = capsys.readouterr()
    return captured.err + captured.out


def test_unknown_recipe_key_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = yaml.safe_load(Path(QUICKSTART).read_text())
    config["model"]["init_args"]["learning_rat"] = 3
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    assert "learning_rat" in _fails(["fit", "--config", str(bad)], capsys)
    assert not (tmp_path / "runs").exists()


def test_wrong_class_path_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    out = _fails(["fit", "--config", QUICKSTART, "--model.init_args.space.class_path=lightning_nas.spaces.NoSuchSpace"],
                 capsys)
    assert "NoSuchSpace" in out


def test_val_split_outside_the_unit_interval_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises((ValueError, SystemExit), match="val_split|") as info:
        cli_main(["fit", "--config", QUICKSTART, "--data.init_args.val_split=1.5"])
    text = str(info.value) + capsys.readouterr().err
    assert "val_split" in text


def test_data_root_without_data_is_refused_before_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning_nas.datamodules import DataRootError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataRootError, match="download"):
        cli_main(["fit", "--config", str(ROOT / "recipes" / "spos" / "cifar10.yaml"), "--trainer.fast_dev_run=1",
                  "--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.strategy=auto",
                  f"--data.init_args.data_dir={tmp_path / 'empty'}"])
    assert not list(tmp_path.rglob("*.ckpt"))


def test_num_classes_and_input_size_come_from_the_data() -> None:
    cli = cli_main(["--config", QUICKSTART], run=False)
    assert cli.model.space.num_classes == 10 and cli.model.space.input_size == 32
    assert cli.model.space.head[-1].out_features == 10


def test_search_subcommand_needs_a_search_callback(tmp_path: Path) -> None:
    from lightning_nas.cli import NASTrainer

    with pytest.raises(ValueError, match="EvolutionSearch"):
        NASTrainer(accelerator="cpu", logger=False, default_root_dir=tmp_path).search()


@pytest.mark.timeout(300)
def test_offline_wandb_run_leaves_its_run_folder(tmp_path: Path) -> None:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true"}
    env.pop("WANDB_API_KEY", None)
    cmd = [sys.executable, "-m", "lightning_nas.cli", "fit", "--config",
           str(ROOT / "recipes" / "train" / "digits.yaml"),
           "--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
           "--trainer.limit_test_batches=1", f"--trainer.default_root_dir={tmp_path}",
           f"--trainer.logger.init_args.save_dir={tmp_path}"]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = list(tmp_path.rglob("offline-run-*"))
    assert runs, f"no offline W&B run folder under {tmp_path}"
    assert list(runs[0].glob("*.wandb")), "the offline run folder holds no run data"
    assert "test/acc" in done.stdout + done.stderr
