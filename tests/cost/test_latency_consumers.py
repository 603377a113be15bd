"""Every consumer of a latency table checks it before any work: ProxylessModule (which also measures a
missing one), EvolutionSearch's latency constraint, and the GPU recipes on a machine without a GPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer

from lightning_nas.callbacks.evolution_search import EvolutionSearch
from lightning_nas.cli import cli_main
from lightning_nas.cost import LatencyTable
from lightning_nas.errors import MissingFileError, PrerequisiteError, find_user_error
from lightning_nas.modules.proxyless import ProxylessModule
from lightning_nas.spaces import MobileNetSpace
from tests.helpers.recipe_smoke import ROOT, smoke_args, write_fake_roots
from tests.helpers.tiny_space import TinyDataModule, TinyModule


def tiny_mobilenet() -> MobileNetSpace:
    torch.manual_seed(0)
    return MobileNetSpace(num_classes=3, input_size=8, width_mult=0.25, stage_channels=(8, 8), stage_depths=(2, 1),
                          stage_strides=(1, 2), head_channels=16, stem_channels=8, first_block_channels=8)


def one_line(err: BaseException) -> str:
    message = str(err)
    assert "\n" not in message, message
    return message


def test_a_fresh_table_keeps_the_supernet_training_and_names_its_batch_and_device(tmp_path: Path) -> None:
    space = tiny_mobilenet().train()
    template = str(tmp_path / "t-{device}-bs{batch_size}.json")
    model = ProxylessModule(space, latency_table=template, latency_device="cpu", latency_batch_size=2,
                            target_fraction=0.5, loss_type="add")
    assert all(m.training for m in model.modules()), "the supernet would train in eval mode"
    assert model.latency_table_path == str(tmp_path / "t-cpu-bs2.json")
    assert LatencyTable.load(tmp_path / "t-cpu-bs2.json").meta["batch_size"] == 2
    ProxylessModule(tiny_mobilenet(), latency_table=template, latency_device="cpu", latency_batch_size=2,
                    target_fraction=0.5, loss_type="add")  # the second run reads the table it wrote


def test_proxyless_refuses_a_table_of_another_batch_device_or_space(tmp_path: Path) -> None:
    path = LatencyTable.build(tiny_mobilenet(), batch_size=2, warmup=1, repeats=3, calibrate=0,
                              progress=False).save(tmp_path / "t.json")
    for kwargs, what in (({"latency_batch_size": 4}, "batch_size 2 (this run: 4)"),
                         ({"latency_batch_size": 2, "latency_device": "cuda"}, "device 'cpu' (this run: 'cuda')")):
        with pytest.raises(PrerequisiteError) as err:
            ProxylessModule(tiny_mobilenet(), latency_table=str(path), target_fraction=0.5, loss_type="add",
                            **{"latency_device": "cpu", **kwargs})
        assert what in one_line(err.value) and str(path) in str(err.value) and "--out" in str(err.value)
    other = MobileNetSpace(num_classes=3, input_size=8, width_mult=0.25, stage_channels=(8, 64), stage_depths=(2, 1),
                           stage_strides=(1, 2), head_channels=16, stem_channels=8, first_block_channels=8)
    with pytest.raises(PrerequisiteError, match="fingerprint"):
        ProxylessModule(other, latency_table=str(path), target_fraction=0.5, loss_type="add")


def test_proxyless_without_a_device_names_the_command_for_a_missing_table(tmp_path: Path) -> None:
    with pytest.raises(MissingFileError) as err:
        ProxylessModule(tiny_mobilenet(), latency_table=str(tmp_path / "none.json"), target_fraction=0.5,
                        loss_type="add")
    assert "python -m lightning_nas.cost.latency" in one_line(err.value)


def test_evolution_search_refuses_a_table_of_another_space_before_training(tmp_path: Path) -> None:
    space = TinyModule().space
    meta = {"format": 1, "space": space.space_name, "fingerprint": "0123456789ab", "input_size": space.input_size,
            "batch_size": 1, "device": "cpu"}
    path = LatencyTable(meta, 1.0, []).save(tmp_path / "other.json")
    search = EvolutionSearch(population=4, topk=2, mutations=1, crossovers=1, generations=1, calib_images=8,
                             latency_table=str(path), constraints=[{"metric": "latency_ms", "max": 5}])
    trainer = Trainer(accelerator="cpu", logger=False, callbacks=[search], max_epochs=1, enable_progress_bar=False,
                      default_root_dir=tmp_path)
    with pytest.raises(PrerequisiteError) as err:
        trainer.fit(TinyModule(), TinyDataModule())
    assert "fingerprint '0123456789ab'" in one_line(err.value) and trainer.global_step == 0


@pytest.mark.parametrize("recipe", ["recipes/proxyless/cifar10_gpu.yaml", "recipes/proxyless/imagenet_gpu.yaml"])
def test_gpu_recipe_without_a_gpu_says_so_in_one_line_before_any_run_folder(
        recipe: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    roots = write_fake_roots(tmp_path / "data")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = [a for a in smoke_args(recipe, roots, work, cpu_tables=False) if "latency" not in a]
    with pytest.raises(BaseException) as info:  # noqa: PT011 (the CLI may print the line and exit)
        cli_main(["fit", *args, "--trainer.fast_dev_run=2"])
    found = find_user_error(info.value)
    message = one_line(found) if found is not None else capsys.readouterr().err.strip().splitlines()[-1]
    assert "measures it on CUDA" in message and "--model.init_args.latency_device=cpu" in message
    assert f"proxyless-{Path(recipe).stem.split('_')[0]}-cuda-bs64.json" in message
    assert sorted(p.name for p in work.iterdir()) == [], "a run folder was written before the error"
    assert (ROOT / recipe).exists()
