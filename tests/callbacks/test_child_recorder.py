"""``ChildRecorder``: checks its module, keeps the top-k children, writes them only on rank 0, restores its table."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from lightning.pytorch import LightningModule

from lightning_nas.callbacks import ChildRecorder
from lightning_nas.spaces.layer_tokens import LayerTokenSpace


def _children(step: int, rewards: list[float]) -> list[dict]:
    arch = {"layer0.fh": 3, "layer0.fw": 3, "layer0.filters": 24}
    return [{"step": step, "child": step * len(rewards) + k, "reward": r, "arch": arch} for k, r in enumerate(rewards)]


def test_a_module_without_children_is_refused_by_name() -> None:
    trainer = SimpleNamespace(default_root_dir=".", is_global_zero=True)
    with pytest.raises(TypeError, match="lacks last_children, space"):
        ChildRecorder().setup(trainer, LightningModule(), "fit")
    with pytest.raises(ValueError, match="top_k"):
        ChildRecorder(top_k=0)


def test_top_k_table_files_and_state(tmp_path) -> None:
    module = SimpleNamespace(space=LayerTokenSpace(num_layers=1, skip_connections=False), last_children=[])
    trainer = SimpleNamespace(default_root_dir=str(tmp_path), is_global_zero=True)
    rec = ChildRecorder(top_k=2, dirpath=str(tmp_path / "run"))
    rec.setup(trainer, module, "fit")
    for step, rewards in enumerate(([0.1, 0.5], [0.3, 0.2], [0.4, 0.05])):
        module.last_children = _children(step, rewards)
        rec.on_train_batch_end(trainer, module, None, step, step)
    assert [c["reward"] for c in rec.best] == [0.5, 0.4] and rec.children_seen == 6 and rec.best_reward == 0.5
    assert len((tmp_path / "run" / "children.jsonl").read_text().splitlines()) == 6
    assert json.loads((tmp_path / "best_arch.json").read_text())["reward"] == 0.5
    restored = ChildRecorder(top_k=2)
    restored.load_state_dict(rec.state_dict())
    assert restored.best == rec.best and restored.children_seen == 6
    other_rank = ChildRecorder(dirpath=str(tmp_path / "rank1"))
    rank1 = SimpleNamespace(default_root_dir=str(tmp_path / "r1"), is_global_zero=False)
    other_rank.setup(rank1, module, "fit")
    other_rank.on_train_batch_end(rank1, module, None, 0, 0)
    assert other_rank.children_seen == 2 and not (tmp_path / "rank1").exists()
