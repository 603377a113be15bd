"""search/output.py: the retrain command a search prints names the search's data, and it runs as printed."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import torch

from lightning_nas.cli import cli_main
from lightning_nas.datamodules import CIFAR10DataModule, CIFAR100DataModule, DigitsDataModule
from lightning_nas.search.output import next_command, publish_arch, run_folder
from lightning_nas.spaces import ShuffleNetSpace
from tests.helpers.recipe_smoke import ROOT


def test_next_command_names_data_other_than_the_retrain_recipes() -> None:
    base = "lightning-nas fit --config recipes/retrain.yaml --model.init_args.arch a.json"
    assert next_command("a.json") == base
    assert next_command("a.json", CIFAR10DataModule("data/cifar10")) == base
    assert next_command("a.json", CIFAR10DataModule("/d/c10")) == f"{base} --data.init_args.data_dir /d/c10"
    assert next_command("a.json", DigitsDataModule()) == f"{base} --data lightning_nas.datamodules.DigitsDataModule"
    assert next_command("a.json", CIFAR100DataModule("x")).endswith(
        "--data lightning_nas.datamodules.CIFAR100DataModule --data.init_args.data_dir x")


def test_quickstart_retrain_command_runs_as_printed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the quickstart searches the digits; the command it prints must retrain on the digits, not retrain.yaml's CIFAR-10
    monkeypatch.chdir(tmp_path)
    space = ShuffleNetSpace(num_classes=10, input_size=32, width_mult=0.25, stage_depths=(1, 1, 2, 1),
                            head_channels=256, dropout=0.0)
    arch = space.sample(torch.Generator().manual_seed(0))
    path = publish_arch(arch, space, run_folder(tmp_path / "runs", "evolution"), tmp_path / "runs", announce=False)
    words = shlex.split(next_command(path, DigitsDataModule()))
    assert words[:2] == ["lightning-nas", "fit"]
    args = [w if w != "recipes/retrain.yaml" else str(ROOT / "recipes" / "retrain.yaml") for w in words[1:]]
    cli = cli_main([*args, "--trainer.fast_dev_run=2", "--trainer.accelerator=cpu", "--trainer.devices=1",
                    f"--trainer.default_root_dir={tmp_path}"])
    assert cli.trainer.state.finished
    assert isinstance(cli.datamodule, DigitsDataModule)
