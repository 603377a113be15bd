"""PathSampling: asks the module's own sampler first (the path-policy seam), counts its own steps, constrained bins."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lightning_nas.callbacks import PathSampling
from lightning_nas.cost import cost_of
from lightning_nas.seeding import step_generator
from tests.helpers.tiny_space import TinyDataModule, TinyModule, TinySpace

FIXED = {"block0.op": "conv1x1", "block1.op": "conv1x1", "block2.op": "conv1x1", "mix.width": 0.5}


class CoinModule(TinyModule):
    """Picks ``FIXED`` on heads of a coin drawn from PathSampling's generator; on tails leaves the path to it."""

    def sample_path(self, generator: torch.Generator) -> dict[str, Any] | None:
        return dict(FIXED) if int(torch.randint(2, (1,), generator=generator)) == 0 else None


class NotCallable(TinyModule):
    sample_path = 3


class RecordStart(Callback):
    """The path PathSampling activated, seen at the start of every batch (after PathSampling's hook)."""

    def __init__(self) -> None:
        self.paths: list[dict[str, Any]] = []

    def on_train_batch_start(self, trainer: Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.paths.append(pl_module.space.active_arch)


def _expected(space: TinySpace, seed: int, step: int) -> dict[str, Any]:
    gen = step_generator(seed, step)
    heads = int(torch.randint(2, (1,), generator=gen)) == 0
    return dict(FIXED) if heads else space.sample(gen)  # tails: the uniform draw goes on with the same generator


def test_a_module_that_picks_its_own_paths_is_asked_first(tmp_path: Path) -> None:
    module, record = CoinModule(), RecordStart()
    module.space.validate(FIXED)  # a valid arch of the space
    trainer = Trainer(accelerator="cpu", devices=1, max_steps=8, limit_val_batches=0, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      default_root_dir=tmp_path, callbacks=[PathSampling(seed=11), record])
    trainer.fit(module, TinyDataModule(batch_size=8))
    assert record.paths == [_expected(module.space, 11, step) for step in range(8)]
    assert FIXED in record.paths and any(p != FIXED for p in record.paths)  # both branches ran


def test_a_non_callable_sample_path_fails_in_setup() -> None:
    with pytest.raises(TypeError, match="NotCallable.sample_path is a int"):
        PathSampling().setup(None, NotCallable(), "fit")  # type: ignore[arg-type]


def test_the_step_is_the_callbacks_own_count_restored_from_its_state() -> None:
    module, sampler = TinyModule(), PathSampling(seed=2)
    sampler.load_state_dict({"seed": 2, "mode": "uniform", "sampled": 5, "fallbacks": 0})
    trainer = SimpleNamespace()  # no fit loop: the callback counts for itself
    sampler.on_train_batch_start(trainer, module, None, 0)  # type: ignore[arg-type]
    assert module.space.active_arch == module.space.sample(step_generator(2, 5))
    assert sampler.state_dict()["sampled"] == 6


def test_constrained_sampling_stays_in_the_bins() -> None:
    space = TinySpace()
    sampler = PathSampling(seed=0, mode="constrained", cost_min=15_000, cost_max=25_000, bins=2)

    class _M:
        pass

    module = _M()
    module.space = space
    sampler.setup(None, module, "fit")  # type: ignore[arg-type]
    costs = [cost_of(space, sampler.sample(module, step), "macs") for step in range(40)]  # type: ignore[arg-type]
    assert sampler.fallbacks == 0
    assert all(15_000 <= c <= 25_000 for c in costs)


def test_constrained_bins_outside_the_space_are_refused() -> None:
    class _M:
        pass

    module = _M()
    module.space = TinySpace()
    with pytest.raises(ValueError, match="miss the space's range"):
        PathSampling(mode="constrained", cost_min=1e12, cost_max=2e12).setup(None, module, "fit")  # type: ignore


def test_path_sampling_needs_a_space() -> None:
    from lightning.pytorch.demos.boring_classes import BoringModel

    with pytest.raises(MisconfigurationException, match="PathSampling needs a module with a `space`"):
        PathSampling().setup(None, BoringModel(), "fit")  # type: ignore[arg-type]


