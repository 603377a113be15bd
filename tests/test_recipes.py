"""Every recipe is instantiated by the CLI and fitted for two steps on tiny data in its real on-disk format."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lightning_nas.cli import cli_main
from tests.helpers.recipe_smoke import ROOT, recipes, smoke_args, write_fake_roots

RECIPES = recipes()


@pytest.fixture(scope="session")
def fake_roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_fake_roots(tmp_path_factory.mktemp("data"))


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_fits_two_steps(recipe: str, fake_roots: dict[str, Path], tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # relative output paths of the recipe land in the temporary folder
    args = ["fit", *smoke_args(recipe, fake_roots, tmp_path), "--trainer.fast_dev_run=2", "--trainer.accelerator=cpu",
            "--trainer.devices=1", "--trainer.strategy=auto", f"--trainer.default_root_dir={tmp_path}"]
    cli = cli_main(args)
    assert cli.trainer.state.finished, f"{recipe} did not finish its two steps"
    # every method steps an optimizer in its two training steps (manual optimization counts its steps too)
    assert cli.trainer.global_step >= 1, f"{recipe}: no optimizer step in two training steps"


def test_nasrl_ptb_recipe_uses_the_papers_controller_lr() -> None:
    # Zoph & Le 2017 (section 4.2): the recurrent-cell search's controller learns at 5e-4 (the CNN search: 6e-4)
    lr = yaml.safe_load((ROOT / "recipes" / "nasrl" / "ptb_rnn.yaml").read_text())["model"]["init_args"]["lr"]
    assert float(lr) == 5e-4
