"""The NAS-RL CIFAR recipe follows Zoph & Le's budget: 12,800 children, depth 6 growing by 2 every 1,600
children, never past ``max_depth``; the controller samples children of every depth on the way."""

from __future__ import annotations

from collections import Counter

import pytest

from lightning_nas.cli import cli_main
from lightning_nas.modules.nasrl import NASRLModule
from lightning_nas.spaces import LayerTokenSpace
from tests.helpers.recipe_smoke import ROOT

RECIPE = ROOT / "recipes/nasrl/cifar10.yaml"


def test_cifar10_recipe_trains_12800_children_with_a_capped_growing_depth() -> None:
    cli = cli_main(["--config", str(RECIPE), "--trainer.logger=false"], run=False)
    model, trainer = cli.model, cli.trainer
    hp = model.hparams
    steps = trainer.max_epochs * hp.controller_steps
    assert steps * hp.children_per_step == 12_800 and trainer.max_steps == -1
    depths = [model.depth(step) for step in range(steps)]
    assert depths[0] == 6 and max(depths) == hp.max_depth == 20
    per_depth = Counter(depths)
    assert {d: n * hp.children_per_step for d, n in per_depth.items()} == {d: 1600 for d in range(6, 21, 2)}
    assert all(model.depth(step) == 20 for step in range(steps, 10 * steps, 97)), "a longer run must stop growing"
    for step in (0, steps - 1):  # the controller emits children of the scheduled depth
        arch = model.sample_archs(step, 1)[0]
        assert len([k for k in arch if k.endswith(".fh")]) == model.depth(step)
        model.space.validate(arch)


def test_a_ceiling_below_the_start_is_refused() -> None:
    with pytest.raises(ValueError, match="max_depth >= the starting depth"):
        NASRLModule(LayerTokenSpace(num_layers=6), max_depth=4)
