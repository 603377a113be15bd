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


def _console(args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> list[str]:
    """Run the ``lightning-nas`` console script; it must exit 2; return its stderr lines."""
    from lightning_nas.cli import main

    monkeypatch.setattr(sys, "argv", ["lightning-nas", *args])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Union" not in err, err
    return [line for line in err.splitlines() if line.strip()]


def test_val_split_outside_the_unit_interval_is_one_line(monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    lines = _console(["fit", "--config", QUICKSTART, "--data.init_args.val_split=1.5"], monkeypatch, capsys)
    assert lines[-1].startswith("lightning-nas: error: val_split=1.5 must lie strictly between 0 and 1")


MISSING_PREREQUISITES = {
    # recipe, overrides -> what the last line must say (the file, what is wrong, the command that makes it)
    "haq/cifar10.yaml": ([], r"HAQ input checkpoint 'runs/train-cifar10/checkpoints/last.ckpt' does not exist.*"
                             r"lightning-nas fit --config recipes/train/"),
    "haq/finetune_cifar10.yaml": ([], r"HAQ policy 'runs/haq-cifar10/best_policy.json' does not exist.*"
                                      r"lightning-nas fit --config recipes/haq/cifar10.yaml"),
    "retrain.yaml": ([], r"Arch file 'runs/spos-cifar10/best_arch.json' does not exist.*"
                         r"lightning-nas fit --config recipes/spos/cifar10.yaml"),
    "parsec/cifar10_transfer20.yaml": ([], r"prior_init file 'runs/parsec-cifar10/prior.json' does not exist.*"
                                           r"lightning-nas fit --config recipes/parsec/cifar10.yaml"),
}


@pytest.mark.parametrize("recipe", sorted(MISSING_PREREQUISITES))
def test_missing_prerequisite_is_one_line_before_any_run_folder(
    recipe: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import re

    from tests.helpers.fake_data import write_fake_cifar10

    monkeypatch.chdir(tmp_path)
    write_fake_cifar10(tmp_path / "data" / "cifar10", n_train=20, n_test=4)
    overrides, expected = MISSING_PREREQUISITES[recipe]
    lines = _console(["fit", "--config", str(ROOT / "recipes" / recipe), *overrides], monkeypatch, capsys)
    assert re.match(r"lightning-nas: error: " + expected, lines[-1]), lines[-1]
    assert not (tmp_path / "runs").exists() and not list(tmp_path.rglob("config.yaml"))


def test_arch_of_other_space_settings_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from lightning_nas.arch import save_arch
    from lightning_nas.spaces import ShuffleNetSpace

    space = ShuffleNetSpace(num_classes=10, input_size=32, width_mult=0.25)
    arch = save_arch(space.sample(), tmp_path / "best_arch.json", space)
    monkeypatch.chdir(tmp_path)
    lines = _console(["fit", "--config", str(ROOT / "recipes" / "retrain.yaml"), f"--model.init_args.arch={arch}",
                      "--model.init_args.space=lightning_nas.spaces.ShuffleNetSpace"], monkeypatch, capsys)
    assert "was searched in ShuffleNetSpace with width_mult=0.25 (this space: 1.0)" in lines[-1]
    assert "allow_settings_change" in lines[-1] and not (tmp_path / "runs").exists()


def test_file_of_another_kind_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint at all")
    monkeypatch.chdir(tmp_path)
    lines = _console(["fit", "--config", str(ROOT / "recipes" / "haq" / "cifar10.yaml"),
                      f"--model.init_args.checkpoint={junk}"], monkeypatch, capsys)
    assert lines[-1].startswith(f"lightning-nas: error: HAQ input checkpoint '{junk}' is not a PyTorch checkpoint")
    assert "weights_only=False" not in lines[-1]


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
