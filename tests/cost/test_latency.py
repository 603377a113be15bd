"""LatencyTable building: leaves the space as it was, shows progress, reports and fights its own noise,
and refuses (one line, with the command that fixes it) a table of another space, batch size or device."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from lightning_nas.cost import LatencyTable, latency_measure, timing
from lightning_nas.cost import latency as latency_mod
from lightning_nas.errors import MissingFileError, PrerequisiteError
from lightning_nas.spaces import MobileNetSpace

FAST = {"warmup": 1, "repeats": 3, "calibrate": 2}


def tiny_space(channels: int = 8) -> MobileNetSpace:
    torch.manual_seed(0)
    return MobileNetSpace(num_classes=3, input_size=8, width_mult=0.25, stage_channels=(channels, channels),
                          stage_depths=(2, 1), stage_strides=(1, 2), head_channels=16, stem_channels=8,
                          first_block_channels=8)


def test_build_leaves_every_module_in_its_mode_and_the_active_arch() -> None:
    space = tiny_space().train()
    arch = space.sample(torch.Generator().manual_seed(3))
    space.activate(arch)
    LatencyTable.build(space, **FAST, progress=False)
    assert all(m.training for m in space.modules()), "a table build left modules in eval mode"
    assert space.active_arch == arch
    space.eval()
    space.head.train()  # a mixed state survives too
    LatencyTable.build(space, **FAST, progress=False)
    assert space.head.training and not space.stem.training


def test_build_shows_progress_and_reports_its_noise(capsys: pytest.CaptureFixture[str]) -> None:
    table = LatencyTable.build(tiny_space(), batch_size=2, **FAST)
    err = capsys.readouterr().err
    assert "latency table (cpu, batch 2):" in err and "timings" in err
    done, total = err.strip().splitlines()[-1].split(": ", 1)[1].split(" timings")[0].split("/")
    assert done == total
    noise = table.meta["noise"]
    assert set(noise["per_unit"]) == {u["name"] for u in table.units}
    assert noise["rounds"] == 3 and noise["max_spread"] >= noise["median_spread"] >= 0
    assert table.meta["batch_size"] == 2


def test_a_burst_of_load_is_measured_again_and_a_persistent_one_warns(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real = timing.measure_ms

    def bursty(fn, device="cpu", warmup=5, repeats=20):  # noqa: ANN001, ANN202
        calls["n"] += 1
        ms = real(fn, device, warmup, repeats)
        return ms * 1000 if calls["n"] == 2 else ms  # one round of one entry hit by a burst

    monkeypatch.setattr(timing, "measure_ms", bursty)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # re-measured: no warning left
        table = LatencyTable.build(tiny_space(), **FAST, max_spread=50.0, progress=False)
    assert table.meta["noise"]["remeasured"] >= 1

    def always_noisy(fn, device="cpu", warmup=5, repeats=20):  # noqa: ANN001, ANN202
        calls["n"] += 1
        return 1.0 + calls["n"] % 7  # 1 to 7 ms: no two rounds agree

    monkeypatch.setattr(timing, "measure_ms", always_noisy)
    with pytest.warns(UserWarning, match="vary by more than"):
        LatencyTable.build(tiny_space(), **FAST, max_spread=0.5, progress=False)


def test_a_calibration_factor_out_of_range_measures_again_then_warns(monkeypatch: pytest.MonkeyPatch) -> None:
    attempts = []
    real = latency_measure._calibration

    def off(raw, archs, measured):  # noqa: ANN001, ANN202
        attempts.append(1)
        return {**real(raw, archs, measured), "scale": 40.0}

    monkeypatch.setattr(latency_measure, "_calibration", off)
    with pytest.warns(UserWarning, match="calibration factor 40 is outside"):
        table = LatencyTable.build(tiny_space(), **FAST, retries=1, progress=False)
    assert len(attempts) == 2 and table.meta["noise"]["attempts"] == 2


def test_check_refuses_another_space_batch_or_device_in_one_line(tmp_path: Path) -> None:
    space = tiny_space()
    path = LatencyTable.build(space, batch_size=2, **FAST, progress=False).save(tmp_path / "t.json")
    table = LatencyTable.load(path)
    table.check(space, batch_size=2, device="cpu")
    for kwargs, what in (({"space": tiny_space(64)}, "fingerprint"), ({"batch_size": 8}, "batch_size 2 (this run: 8)"),
                         ({"device": "cuda"}, "device 'cpu' (this run: 'cuda')")):
        with pytest.raises(PrerequisiteError) as err:
            table.check(kwargs.pop("space", space), **kwargs)
        message = str(err.value)
        assert "\n" not in message and str(path) in message and what in message
        assert "python -m lightning_nas.cost.latency --config" in message and f"--out {path}" in message


def test_load_names_a_missing_file_and_the_command_that_builds_it(tmp_path: Path) -> None:
    with pytest.raises(MissingFileError, match=r"does not exist; build it with: python -m lightning_nas.cost.latency "
                                               r".*--batch-size 64 --device cuda --out"):
        LatencyTable.load(tmp_path / "none.json", batch_size=64, device="cuda")
    (tmp_path / "x.json").write_text(json.dumps({"arch": {}}))
    with pytest.raises(PrerequisiteError, match="is not a latency table"):
        LatencyTable.load(tmp_path / "x.json")


def test_build_command_keeps_the_recipe_and_its_space_overrides() -> None:
    argv = ["fit", "--config", "recipes/proxyless/cifar10_cpu.yaml", "--trainer.max_epochs=3",
            "--model.init_args.space.init_args.width_mult=0.5", "--data.init_args.data_dir", "d"]
    assert latency_mod.build_command("t.json", 4, "cpu", argv) == (
        "python -m lightning_nas.cost.latency --config recipes/proxyless/cifar10_cpu.yaml "
        "--model.init_args.space.init_args.width_mult=0.5 --batch-size 4 --device cpu --out t.json")
