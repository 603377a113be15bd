"""The lightning-nas CLI: bad input fails before training with a clear message; W&B offline leaves a run folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch import Callback, LightningModule, Trainer

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


# --- every bad input is refused before a run folder, config, logger run or checkpoint exists --------------------

def _spos_checkpoint(path: Path, model_class: str, width_mult: float = 0.25) -> Path:
    """A checkpoint as a CLI fit writes it (weights, hyper-parameters with the class path, the space's fingerprint)."""
    from lightning_nas.modules import SPOSModule
    from lightning_nas.spaces import ShuffleNetSpace

    space = ShuffleNetSpace(num_classes=10, input_size=32, width_mult=width_mult, stage_depths=[1, 1, 2, 1],
                            head_channels=256, dropout=0.0)
    module = SPOSModule(space)
    ckpt: dict = {"state_dict": module.state_dict(), "hyper_parameters": {"_class_path": model_class}}
    module.on_save_checkpoint(ckpt)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)
    return path


def _truncated_cifar(root: Path) -> Path:
    from tests.helpers.fake_data import write_fake_cifar10

    data = write_fake_cifar10(root, n_train=20, n_test=4)
    batch = data / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[: batch.stat().st_size // 2])
    return data


def _other_space_table(path: Path) -> Path:
    from lightning_nas.cost import LatencyTable
    from lightning_nas.spaces import ShuffleNetSpace

    other = ShuffleNetSpace(num_classes=10, input_size=32, width_mult=0.5, stage_depths=[1, 1, 2, 1], head_channels=256)
    meta = {"format": 1, "space": other.space_name, "fingerprint": other.fingerprint(), "input_size": 32,
            "batch_size": 1, "device": "cpu"}
    return LatencyTable(meta, 1.0, []).save(path)


CLASSIFICATION = "lightning_nas.modules.ClassificationModule"
BAD_INPUTS = {
    # case -> (recipe, extra args made in tmp_path, the start of the line users see)
    "truncated CIFAR batch": ("spos/cifar10.yaml", lambda t: [f"--data.init_args.data_dir={_truncated_cifar(t / 'c')}",
                                                              "--trainer.accelerator=cpu", "--trainer.devices=1"],
                              r"CIFAR10DataModule: '.*data_batch_3' is not a cifar10 batch file \(UnpicklingError: "
                              r"pickle data was truncated\): it is truncated or of another data set\. Fix: delete"),
    "missing --ckpt_path": ("quickstart.yaml", lambda t: ["--ckpt_path=nope.ckpt"],
                            r"--ckpt_path 'nope.ckpt' does not exist"),
    "random bytes as --ckpt_path": ("quickstart.yaml", lambda t: [f"--ckpt_path={_junk(t / 'given' / 'x.ckpt')}"],
                                    r"--ckpt_path '.*x.ckpt' is not a PyTorch checkpoint \(it starts with bytes "),
    "checkpoint of another model": (
        "quickstart.yaml",
        lambda t: [f"--ckpt_path={_spos_checkpoint(t / 'given' / 'c.ckpt', CLASSIFICATION)}"],
        r"--ckpt_path '.*c.ckpt' is a checkpoint of ClassificationModule \(lightning_nas.modules."
        r"ClassificationModule\), but this recipe's model is SPOSModule"),
    "checkpoint of another space": (
        "quickstart.yaml",
        lambda t: [f"--ckpt_path={_spos_checkpoint(t / 'given' / 's.ckpt', 'lightning_nas.modules.SPOSModule', 0.5)}"],
        r"--ckpt_path '.*s.ckpt': checkpoint was saved from space ShuffleNetSpace \(fingerprint \w+\), but this "
        r"model's space is ShuffleNetSpace \(fingerprint \w+\)"),
    "impossible constraint": ("quickstart.yaml", lambda t: ["--trainer.callbacks.init_args.constraints=[{metric: macs, "
                                                            "max: 10}]"],
                              r"No arch of ShuffleNetSpace meets constraint 'macs_le_10'"),
    "latency table of another space": (
        "quickstart.yaml",
        lambda t: [f"--trainer.callbacks.init_args.latency_table={_other_space_table(t / 'l.json')}"],
        r"latency table .*l.json was measured for another setting: fingerprint"),
}


def _junk(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(range(256)) * 4)
    return path


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_before_anything_is_written(case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    import re

    recipe, make_args, expected = BAD_INPUTS[case]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")  # a W&B run would leave its folder: there must be none
    lines = _console(["fit", "--config", str(ROOT / "recipes" / recipe), *make_args(tmp_path)], monkeypatch, capsys)
    assert re.match(r"lightning-nas: error: " + expected, lines[-1]), lines[-1]
    assert "weights_only=False" not in lines[-1] and "weights_only` set to `False" not in lines[-1]
    assert not (tmp_path / "runs").exists() and not list(tmp_path.rglob("config.yaml"))
    assert not list(tmp_path.rglob("wandb")) and not [p for p in tmp_path.rglob("*.ckpt") if "given" not in p.parts]


# --- DDP from a single-path recipe ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("args", "launcher"), [
    (["--trainer.devices=2"], "_SubprocessScriptLauncher"),
    (["--trainer.devices=2", "--trainer.strategy=ddp_spawn"], "_MultiProcessingLauncher")])
def test_devices_picks_a_strategy_that_tolerates_unused_candidates(args: list[str], launcher: str) -> None:
    from lightning.pytorch.strategies import DDPStrategy

    cli = cli_main(["--config", QUICKSTART, "--trainer.logger=false", *args], run=False)
    assert isinstance(cli.trainer.strategy, DDPStrategy) and cli.trainer.num_devices == 2
    assert cli.trainer.strategy._ddp_kwargs.get("find_unused_parameters") is True
    assert type(cli.trainer.strategy.launcher).__name__ == launcher  # ddp re-runs the command, ddp_spawn spawns
    one = cli_main(["--config", QUICKSTART, "--trainer.logger=false"], run=False)
    assert type(one.trainer.strategy).__name__ == "SingleDeviceStrategy"  # one device: no DDP at all


class RanksAgree(Callback):
    """Inside each spawned rank: the same weights on both ranks after training, and the same search answer."""

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        weights = torch.cat([p.detach().flatten() for p in pl_module.parameters()])
        gathered = pl_module.all_gather(weights)
        assert trainer.world_size == 2 and torch.equal(gathered[0], gathered[1]), "ranks trained different weights"

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        from lightning_nas.callbacks import EvolutionSearch

        search = next(cb for cb in trainer.callbacks if isinstance(cb, EvolutionSearch))
        Path(trainer.default_root_dir, f"rank{trainer.global_rank}.json").write_text(json.dumps(search.best))


QUICK = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=3", "--trainer.limit_val_batches=1",
         "--trainer.logger=false", "--trainer.callbacks.init_args.population=4",
         "--trainer.callbacks.init_args.topk=2", "--trainer.callbacks.init_args.mutations=1",
         "--trainer.callbacks.init_args.crossovers=1", "--trainer.callbacks.init_args.generations=2",
         "--trainer.callbacks.init_args.calib_images=64", "--trainer.callbacks.init_args.test_best=false"]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_quickstart_on_two_cpu_ranks(tmp_path: Path) -> None:
    cli_main(["fit", "--config", QUICKSTART, *QUICK, f"--trainer.default_root_dir={tmp_path}", "--trainer.devices=2",
              "--trainer.strategy=ddp_spawn", "--trainer.callbacks+=tests.test_cli.RanksAgree"])
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1] and ranks[0], "the ranks' searches disagree"
    assert json.loads((tmp_path / "best_arch.json").read_text())["arch"] == next(iter(ranks[0].values()))["arch"]
