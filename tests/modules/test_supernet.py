"""The supernet methods' shared base: the space fingerprint, the schedule arithmetic, the held-out arch step."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer
from torch import Tensor, nn

from lightning_nas.callbacks import PathSampling
from lightning_nas.errors import PrerequisiteError
from lightning_nas.modules.supernet import (
    HeldOutArchSearch,
    SupernetModule,
    check_space_checkpoint,
    write_space_checkpoint,
)
from lightning_nas.seeding import step_generator
from tests.helpers.tiny_space import TinyDataModule, TinySpace

ARCH_LR = 0.5


class ToySearch(HeldOutArchSearch):
    """Weight steps on the PathSampling path; after each, an arch step whose gradient is all ones."""

    checkpoint_key = "toy"
    arch_role = "toy logits"

    def __init__(self, fail_at: int | None = None) -> None:
        super().__init__(TinySpace(), seed=3)
        self.logits = nn.ParameterList([nn.Parameter(torch.zeros(len(v))) for v in self._decisions.values()])
        self.fail_at = fail_at
        self.draws: list[int] = []
        self.restored: list[bool] = []

    def distribution(self) -> nn.ParameterList:
        return self.logits

    def validation_arch(self) -> dict[str, Any]:
        return self.space.sample(torch.Generator().manual_seed(0))

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        w_opt, _ = self.optimizers()
        x, y = batch
        w_opt.zero_grad(set_to_none=True)
        self.manual_backward(F.cross_entropy(self.space(x), y))
        w_opt.step()
        path = self.space.active_arch
        with self.held_out_step() as ((hx, hy), gen):
            self.draws.append(int(torch.randint(1000, (1,), generator=gen)))
            self.space.activate(self.space.sample(gen), validate=False)  # an arch step runs other paths
            for a in self.logits:
                a.grad = torch.ones_like(a)
            if self.batch_step == self.fail_at:
                raise RuntimeError("failed inside the arch step")
        self.restored.append(self.space.active_arch == path)

    def configure_optimizers(self) -> Any:
        return [torch.optim.SGD(self.space.parameters(), lr=0.01),
                torch.optim.SGD(self.logits.parameters(), lr=ARCH_LR)]


def _fit(module: ToySearch, tmp_path: Path, steps: int, **kwargs: Any) -> Trainer:
    trainer = Trainer(accelerator="cpu", devices=1, max_steps=steps, limit_val_batches=0, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      default_root_dir=tmp_path, callbacks=[PathSampling(seed=1)])
    trainer.fit(module, **(kwargs or {"datamodule": TinyDataModule(batch_size=8)}))
    return trainer


def test_arch_steps_use_held_out_batches_restore_the_path_and_leave_global_step_alone(tmp_path: Path) -> None:
    module = ToySearch()
    trainer = _fit(module, tmp_path, steps=5)
    assert trainer.global_step == 5 and module.arch_steps == 5 and module.train_batches == 5
    assert module.restored == [True] * 5
    assert module.draws == [int(torch.randint(1000, (1,), generator=step_generator(3 + 1, s))) for s in range(5)]
    assert all(torch.equal(a, torch.full_like(a, -ARCH_LR * 5)) for a in module.logits)
    assert module._held_out.state_dict()["consumed"] == 5
    assert module.arch_probabilities()["block0.op"] == pytest.approx({"conv1x1": 1 / 3, "conv3x3": 1 / 3,
                                                                      "conv5x5": 1 / 3})


def test_a_failing_arch_step_takes_no_step_and_restores_the_path(tmp_path: Path) -> None:
    module = ToySearch(fail_at=1)
    with pytest.raises(RuntimeError, match="failed inside the arch step"):
        _fit(module, tmp_path, steps=5)
    assert module.arch_steps == 1
    assert all(torch.equal(a, torch.full_like(a, -ARCH_LR)) for a in module.logits)
    assert module.space.active_arch == module.space.sample(step_generator(1, 1))  # PathSampling's path of batch 1


def test_fit_needs_a_datamodule_with_a_validation_split(tmp_path: Path) -> None:
    loader = TinyDataModule(batch_size=8).train_dataloader()
    with pytest.raises(ValueError, match="ToySearch learns its toy logits on the held-out validation split"):
        _fit(ToySearch(), tmp_path, steps=1, train_dataloaders=loader)


def test_checkpoint_state_round_trip_and_space_check() -> None:
    module = ToySearch()
    module.arch_steps, module.train_batches = 4, 9
    module._held_out.load_state_dict({"epoch": 2, "consumed": 3})
    checkpoint: dict[str, Any] = {}
    module.on_save_checkpoint(checkpoint)
    assert checkpoint["space"] == {"name": "TinySpace", "fingerprint": module.space.fingerprint()}
    assert checkpoint["toy"] == {"held_out": {"epoch": 2, "consumed": 3}, "arch_steps": 4, "train_batches": 9}
    resumed = ToySearch()
    resumed.on_load_checkpoint(checkpoint)
    assert (resumed.arch_steps, resumed.train_batches, resumed.batch_step) == (4, 9, 8)
    assert resumed._held_out.state_dict() == {"epoch": 2, "consumed": 3}
    other: dict[str, Any] = {}
    write_space_checkpoint(other, TinySpace(blocks=2))
    with pytest.raises(PrerequisiteError, match="checkpoint was saved from space TinySpace"):
        check_space_checkpoint(module.space, other)
    check_space_checkpoint(module.space, {})  # a checkpoint that names no space is not refused


def test_a_supernet_module_needs_a_search_space() -> None:
    with pytest.raises(TypeError, match="SupernetModule needs a lightning_nas SearchSpace, got Linear"):
        SupernetModule(nn.Linear(2, 2))  # type: ignore[arg-type]


@pytest.mark.parametrize(("max_epochs", "epochs", "steps"), [(4, 1.5, 15), (4, 0, 0), (None, 0.5, 20), (-1, 1, 40)])
def test_epochs_to_steps(max_epochs: int | None, epochs: float, steps: int) -> None:
    module = SupernetModule(TinySpace())
    module._trainer = SimpleNamespace(max_epochs=max_epochs, estimated_stepping_batches=40)  # type: ignore[assignment]
    assert module.epochs_to_steps(epochs) == steps
