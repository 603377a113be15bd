"""What a two-step smoke fit of a shipped recipe needs: fake data roots and the per-recipe overrides.

Shared by ``tests/test_recipes.py`` (in process, CPU) and ``benchmarks/gpu_smoke.py`` (subprocesses,
GPU or CPU), so both run the recipes with the same changes. Kept small: the recipe itself is what is tested.

Example::

    roots = write_fake_roots(tmp_path / "data")
    args = smoke_args("recipes/spos/cifar10.yaml", roots, tmp_path)  # after "fit"
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml

from tests.helpers.fake_data import (
    write_fake_cifar10,
    write_fake_cifar100,
    write_fake_imagenet,
    write_fake_tinyimagenet,
)

__all__ = ["EDITS", "EXTRA", "ROOT", "recipes", "smoke_args", "write_fake_roots"]

ROOT = Path(__file__).resolve().parents[2]

# Per-recipe changes for a 2-step smoke fit.
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
EDITS: dict[str, Callable[[dict[str, Any]], None]] = {
    "recipes/haq/finetune_cifar10.yaml": _untrained_quantized,
}


def recipes() -> list[str]:
    """Every shipped recipe, as a path relative to the repository root."""
    return sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "recipes").rglob("*.yaml"))


def write_fake_roots(root: Path) -> dict[str, Path]:
    """Tiny fake data sets in the real layouts, keyed by the datamodule class that reads each."""
    return {
        "CIFAR10DataModule": write_fake_cifar10(root / "c10", n_train=40, n_test=10),
        "CIFAR100DataModule": write_fake_cifar100(root / "c100", n_train=40, n_test=10),
        "TinyImageNetDataModule": write_fake_tinyimagenet(root / "tiny", n_classes=2, per_class=6, val_per_class=2),
        "ImageNetDataModule": write_fake_imagenet(root / "inet", n_classes=2, per_class=6, val_per_class=2),
    }


def smoke_args(recipe: str, roots: dict[str, Path], workdir: Path, cpu_tables: bool = True) -> list[str]:
    """The ``fit`` arguments after ``fit`` (config, data and model overrides) for a smoke fit of ``recipe``.

    Files the recipe reads from an earlier step (an arch, a prior, an edited recipe) are written into ``workdir``.

    Args:
        recipe: a path relative to the repository root, e.g. ``recipes/spos/cifar10.yaml``.
        roots: the fake data roots of :func:`write_fake_roots`.
        workdir: a scratch folder for the files written here.
        cpu_tables: measure GPU recipes' latency tables on the CPU at batch 1 (a machine without a GPU).
    """
    config = yaml.safe_load((ROOT / recipe).read_text())
    path = ROOT / recipe
    if recipe in EDITS:
        EDITS[recipe](config)
        path = workdir / "recipe.yaml"
        path.write_text(yaml.safe_dump(config))
    return ["--config", str(path), *_data_args(config, roots), *_model_args(config, workdir, cpu_tables),
            *EXTRA.get(recipe, [])]


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


def _model_args(config: dict[str, Any], workdir: Path, cpu_tables: bool) -> list[str]:
    init = config.get("model", {}).get("init_args", {}) or {}
    args = []
    if cpu_tables and init.get("latency_device") not in (None, "cpu"):  # a GPU table, measured on this CPU instead
        args += ["--model.init_args.latency_device=cpu", "--model.init_args.latency_batch_size=1"]
    arch = init.get("arch")
    if isinstance(arch, str) and arch.endswith(".json"):  # retraining: an arch found by a search
        args.append(f"--model.init_args.arch={_sample_arch_file(config, workdir)}")
    if init.get("prior_init"):  # transfer: the prior.json an earlier search wrote
        from lightning_nas.modules.parsec import save_prior

        space = _space(config)
        decisions = space.decisions()
        save_prior(workdir / init["prior_init"], space, decisions, [torch.zeros(len(v)) for v in decisions.values()])
    return args


def _import(class_path: str) -> Any:
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


# a recipe that builds the space its arch file records (retrain.yaml) gets an arch of the SPOS space
DEFAULT_SPACE = {"class_path": "lightning_nas.spaces.ShuffleNetSpace"}


def _space(config: dict[str, Any]) -> Any:
    data_cls = _import(config["data"]["class_path"])
    space_cfg = config["model"]["init_args"].get("space") or DEFAULT_SPACE
    return _import(space_cfg["class_path"])(**(space_cfg.get("init_args") or {}), num_classes=data_cls.num_classes,
                                            input_size=data_cls.input_size)


def _sample_arch_file(config: dict[str, Any], workdir: Path) -> Path:
    from lightning_nas.arch import save_arch

    space = _space(config)
    return save_arch(space.sample(torch.Generator().manual_seed(0)), workdir / "arch.json", space)
