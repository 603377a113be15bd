"""Every recipe is instantiated by the CLI and fitted for two steps on tiny data in its real on-disk format."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from lightning_nas.cli import cli_main
from tests.helpers.fake_data import (
    write_fake_cifar10,
    write_fake_cifar100,
    write_fake_imagenet,
    write_fake_tinyimagenet,
)

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "recipes").rglob("*.yaml"))

# Per-recipe changes for a 2-step CPU smoke fit. Kept small: the recipe itself is what is tested.
EXTRA: dict[str, list[str]] = {
    # measuring a 224 px latency table for every candidate takes minutes on CPU; the MACs model is the same code path
    "recipes/proxyless/imagenet_cpu.yaml": ["--model.init_args.latency_table=null",
                                            "--model.init_args.latency_metric=macs"],
    "recipes/proxyless/imagenet_gpu.yaml": ["--model.init_args.latency_table=null",
                                            "--model.init_args.latency_metric=macs"],
    # HAQ quantizes a trained network; the smoke fit allows an untrained one instead of a checkpoint file
    "recipes/haq/cifar10.yaml": ["--model.init_args.checkpoint=null", "--model.init_args.network=resnet18",
                                 "--model.init_args.allow_untrained=true"],
    "recipes/haq/cifar10_resnet18.yaml": ["--model.init_args.weights=null", "--model.init_args.allow_untrained=true"],
    "recipes/haq/imagenet.yaml": ["--model.init_args.weights=null", "--model.init_args.allow_untrained=true",
                                  "--model.init_args.compare=false"],
    "recipes/nasrl/ptb_rnn.yaml": ["--data.init_args.data_dir=null"],
    # K archs per step run one after another: two are enough to exercise the estimator
    "recipes/parsec/cifar10.yaml": ["--model.init_args.K=2"],
    "recipes/parsec/cifar10_transfer20.yaml": ["--model.init_args.K=2"],
    "recipes/parsec/imagenet_transfer.yaml": ["--model.init_args.K=2"],
}


def _untrained_quantized(config: dict[str, Any]) -> None:
    # the fine-tuning recipe quantizes a trained checkpoint with a found policy; here: an untrained net at 8 bits
    config["model"]["init_args"]["model"]["init_args"] = {"network": "resnet18", "allow_untrained": True, "bits": 8}


# Edits to the recipe's YAML itself, where nested `null` overrides cannot be given on the command line.
EDITS: dict[str, Any] = {
    "recipes/haq/finetune_cifar10.yaml": _untrained_quantized,
}


@pytest.fixture(scope="session")
def fake_roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("data")
    return {
        "CIFAR10DataModule": write_fake_cifar10(root / "c10", n_train=40, n_test=10),
        "CIFAR100DataModule": write_fake_cifar100(root / "c100", n_train=40, n_test=10),
        "TinyImageNetDataModule": write_fake_tinyimagenet(root / "tiny", n_classes=2, per_class=6, val_per_class=2),
        "ImageNetDataModule": write_fake_imagenet(root / "inet", n_classes=2, per_class=6, val_per_class=2),
    }


def _data_args(config: dict[str, Any], roots: dict[str, Path]) -> list[str]:
    data = config.get("data", {})
    name = data.get("class_path", "").rsplit(".", 1)[-1]
    init = data.get("init_args", {}) or {}
    args = []
    if name in roots:
        args.append(f"--data.init_args.data_dir={roots[name]}")
    if "batch_size" in init or name in roots or name == "DigitsDataModule":
        args.append("--data.init_args.batch_size=4")
    if "num_workers" in init or name in roots:
        args.append("--data.init_args.num_workers=0")
    return args


def _model_args(config: dict[str, Any], tmp_path: Path) -> list[str]:
    init = config.get("model", {}).get("init_args", {}) or {}
    args = []
    if init.get("latency_device") not in (None, "cpu"):  # a GPU table, measured on this CPU at batch 1 instead
        args += ["--model.init_args.latency_device=cpu", "--model.init_args.latency_batch_size=1"]
    arch = init.get("arch")
    if isinstance(arch, str) and arch.endswith(".json"):  # retraining: an arch found by a search
        args.append(f"--model.init_args.arch={_sample_arch_file(config, tmp_path)}")
    if init.get("prior_init"):  # transfer: the prior.json an earlier search wrote
        from lightning_nas.modules.parsec import save_prior

        space = _space(config)
        decisions = space.decisions()
        save_prior(tmp_path / init["prior_init"], space, decisions, [torch.zeros(len(v)) for v in decisions.values()])
    return args


def _import(class_path: str) -> Any:
    import importlib

    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _space(config: dict[str, Any]) -> Any:
    data_cls = _import(config["data"]["class_path"])
    space_cfg = config["model"]["init_args"]["space"]
    return _import(space_cfg["class_path"])(**(space_cfg.get("init_args") or {}), num_classes=data_cls.num_classes,
                                            input_size=data_cls.input_size)


def _sample_arch_file(config: dict[str, Any], tmp_path: Path) -> Path:
    from lightning_nas.arch import save_arch

    space = _space(config)
    return save_arch(space.sample(torch.Generator().manual_seed(0)), tmp_path / "arch.json", space)


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_fits_two_steps(recipe: str, fake_roots: dict[str, Path], tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # relative output paths of the recipe land in the temporary folder
    config = yaml.safe_load((ROOT / recipe).read_text())
    path = ROOT / recipe
    if recipe in EDITS:
        EDITS[recipe](config)
        path = tmp_path / "recipe.yaml"
        path.write_text(yaml.safe_dump(config))
    args = ["fit", "--config", str(path), "--trainer.fast_dev_run=2", "--trainer.accelerator=cpu",
            "--trainer.devices=1", "--trainer.strategy=auto", f"--trainer.default_root_dir={tmp_path}",
            *_data_args(config, fake_roots), *_model_args(config, tmp_path), *EXTRA.get(recipe, [])]
    cli = cli_main(args)
    assert cli.trainer.state.finished, f"{recipe} did not finish its two steps"
    assert cli.trainer.global_step >= 1 or not cli.model.automatic_optimization
