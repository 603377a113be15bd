"""Every recipe chain end to end, as a user runs it: the shipped recipes, in a fresh folder whose ``data/`` holds tiny
data sets in their real on-disk layouts, plus only the overrides a user would type to make a run short (epochs,
batches, budgets). No path is given by hand: each step must find what the previous one wrote where it looks by
default (or where the previous step said it wrote it).

Chains: SPOS fit -> ``search`` with a new budget -> retrain; train -> HAQ -> HAQ fine-tune; ProxylessNAS -> retrain;
PARSEC -> transfer from its prior -> retrain; InstaNAS pre-train -> search -> fine-tune (one recipe, three stages);
NAS-RL CNN search; NAS-RL RNN-cell search on the shipped corpus.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch

from lightning_nas.arch import load_arch, read_arch_file
from lightning_nas.callbacks import EvolutionSearch
from lightning_nas.cli import cli_main
from tests.helpers.fake_data import write_fake_cifar10

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
# a short CPU run: what a user types to try a recipe
SHORT = ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.strategy=auto",
         "--data.init_args.batch_size=4", "--data.init_args.num_workers=0"]
EPOCH = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=2",
         "--trainer.limit_test_batches=2"]
# EvolutionSearch is the last callback of the SPOS recipes, so these set its budget
SMALL_EVOLUTION = ["--trainer.callbacks.init_args.population=4", "--trainer.callbacks.init_args.topk=2",
                   "--trainer.callbacks.init_args.mutations=1", "--trainer.callbacks.init_args.crossovers=1",
                   "--trainer.callbacks.init_args.generations=1", "--trainer.callbacks.init_args.calib_images=8"]


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh folder with fake CIFAR-10 where the recipes look for it (``data/cifar10``)."""
    monkeypatch.chdir(tmp_path)
    assert write_fake_cifar10(tmp_path / "data" / "cifar10", n_train=64, n_test=8) == tmp_path / "data" / "cifar10"
    return tmp_path


def run(subcommand: str, recipe: str, *args: str) -> Any:
    cli = cli_main([subcommand, "--config", str(ROOT / "recipes" / recipe), *SHORT, *args])
    assert cli.trainer.state.finished, f"{subcommand} {recipe} did not finish"
    assert not cli.trainer.interrupted
    return cli


def retrain(arch_file: str | None = None) -> Any:
    """``recipes/retrain.yaml`` with its default arch file, or the one a search printed."""
    extra = [f"--model.init_args.arch={arch_file}"] if arch_file else []
    cli = run("fit", "retrain.yaml", *EPOCH, *extra)
    found = read_arch_file(arch_file or "runs/spos-cifar10/best_arch.json")
    assert cli.model.net.arch == found["arch"], "retrain.yaml did not build the arch the search found"
    assert type(cli.model.net).__name__ and Path("runs/retrain/checkpoints/last.ckpt").is_file()
    assert "test/acc" in cli.trainer.callback_metrics  # test_after_fit: the retrained net is scored on the test split
    return cli


def evolution(cli: Any) -> EvolutionSearch:
    (search,) = [cb for cb in cli.trainer.callbacks if isinstance(cb, EvolutionSearch)]
    return search


def test_spos_fit_then_search_with_a_new_budget_then_retrain(workdir: Path) -> None:
    recipe = "spos/cifar10.yaml"
    fitted = evolution(run("fit", recipe, *EPOCH, *SMALL_EVOLUTION))
    root = Path("runs/spos-cifar10")
    assert (root / "checkpoints" / "last.ckpt").is_file()
    first = read_arch_file(root / "best_arch.json")
    assert first["constraint"] == "macs_le_100M" and (root / "best_arch_macs_le_115M.json").is_file()
    (fit_run,) = sorted(root.glob("evolution-*"))
    history = (fit_run / "search_history.jsonl").read_bytes()

    cli = run("search", recipe, "--ckpt_path", str(root / "checkpoints" / "last.ckpt"), "--trainer.limit_val_batches=2",
              *SMALL_EVOLUTION, "--trainer.callbacks.init_args.constraints=[{metric: macs, max: 105000000}]")
    # the search ran on the checkpoint's weights, not on a fresh supernet
    assert evolution(cli)._settings["weights"] == fitted._settings["weights"]
    again = read_arch_file(root / "best_arch.json")
    assert again["constraint"] == "macs_le_105M" and again["costs"]["macs"] <= 105e6
    runs = sorted(root.glob("evolution-*"))
    assert len(runs) == 2 and (fit_run / "search_history.jsonl").read_bytes() == history  # the fit's files kept
    assert again["run_folder"] == str(runs[1])

    retrain()


def test_train_then_haq_then_finetune(workdir: Path) -> None:
    cli = run("fit", "train/cifar10.yaml", *EPOCH)
    assert Path("runs/train-cifar10/checkpoints/last.ckpt").is_file()
    trained = {k: v.clone() for k, v in cli.model.net.state_dict().items()}

    cli = run("fit", "haq/cifar10.yaml", "--model.init_args.episodes=2", "--model.init_args.warmup=1",
              "--model.init_args.finetune_batches=1", "--model.init_args.val_batches=1")
    # HAQ quantizes the trained network (same float weights), and writes the policy where the fine-tune looks
    float_net = cli.model.float_net if hasattr(cli.model, "float_net") else None
    if float_net is not None:
        first = next(iter(trained))
        assert torch.equal(float_net.state_dict()[first], trained[first])
    policy = json.loads(Path("runs/haq-cifar10/best_policy.json").read_text())
    assert policy["layers"]

    cli = run("fit", "haq/finetune_cifar10.yaml", *EPOCH)
    assert cli.trainer.global_step > 0 and Path("runs/haq-finetune-cifar10/checkpoints/last.ckpt").is_file()


def test_proxyless_then_retrain(workdir: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        cli = run("fit", "proxyless/cifar10_cpu.yaml", *EPOCH, "--model.init_args.warmup_epochs=0")
    root = Path("runs/proxyless-cifar10-cpu")
    arch_file = root / "best_arch.json"
    assert load_arch(arch_file, cli.model.space) == cli.model.best_arch()
    # the search says where its answer is and how to retrain it; the user copies that command
    said = [r.getMessage() for r in caplog.records if "Retrain it:" in r.getMessage()]
    assert said and f"--model.init_args.arch {arch_file}" in said[-1]
    retrain(str(arch_file))


def test_parsec_then_transfer_then_retrain(workdir: Path, caplog: pytest.LogCaptureFixture) -> None:
    run("fit", "parsec/cifar10.yaml", *EPOCH, "--model.init_args.K=2")
    prior = Path("runs/parsec-cifar10/prior.json")
    assert prior.is_file() and Path("runs/parsec-cifar10/best_arch.json").is_file()
    with caplog.at_level(logging.INFO):
        cli = run("fit", "parsec/cifar10_transfer20.yaml", *EPOCH, "--model.init_args.K=2")
    assert any(f"prior loaded from {prior}" in r.getMessage() for r in caplog.records)
    saved = json.loads(prior.read_text())["logits"]
    # the transfer run started from the learned prior (its logits moved away from uniform during the search)
    assert any(max(v) != min(v) for v in saved.values())
    assert cli.model.prior_logits is not None
    retrain("runs/parsec-cifar10-transfer20/best_arch.json")


def test_instanas_pretrain_search_finetune(workdir: Path) -> None:
    cli = run("fit", "instanas/cifar10.yaml", "--trainer.max_epochs=4", "--trainer.limit_train_batches=2",
              "--trainer.limit_val_batches=2", "--model.init_args.pretrain_epochs=1",
              "--model.init_args.search_epochs=2", "--model.init_args.finetune_epochs=1")
    stages = [cli.model.stage_of(e) for e in range(4)]
    assert stages == ["pretrain", "search", "search", "finetune"]
    summaries = list(Path("runs").rglob("instanas_summary.json"))
    assert summaries, "InstaNAS wrote no instanas_summary.json at fit end"
    assert Path("runs/instanas-cifar10/checkpoints/last.ckpt").is_file()


def test_nasrl_cnn_search(workdir: Path) -> None:
    cli = run("fit", "nasrl/cifar10.yaml", "--trainer.max_epochs=1", "--model.init_args.controller_steps=1",
              "--model.init_args.children_per_step=2", "--model.init_args.child_epochs=1",
              "--data.init_args.val_split=0.25")
    best = read_arch_file("runs/nasrl-cifar10/best_arch.json")
    assert best["arch"] and Path(best["run_folder"], "children.jsonl").is_file()
    assert cli.trainer.global_step >= 1


def test_nasrl_rnn_cell_search_on_the_shipped_corpus(workdir: Path) -> None:
    cli_main(["fit", "--config", str(ROOT / "recipes" / "nasrl" / "ptb_rnn.yaml"), "--trainer.accelerator=cpu",
              "--trainer.devices=1", "--trainer.strategy=auto", "--trainer.max_epochs=1",
              "--data.init_args.data_dir=null", "--model.init_args.controller_steps=1",
              "--model.init_args.children_per_step=2", "--model.init_args.child_epochs=1"])
    best = read_arch_file("runs/nasrl-ptb/best_arch.json")
    assert best["arch"] and best["reward"] > 0
