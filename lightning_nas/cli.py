"""The ``lightning-nas`` console script: a ``LightningCLI`` over our modules, datamodules and recipes.

Subcommands: ``fit``, ``validate``, ``test``, ``predict`` (Lightning's) and ``search``, which runs the
search callbacks (``EvolutionSearch``) on a trained supernet checkpoint without training again::

    lightning-nas fit --config recipes/spos/cifar10.yaml
    lightning-nas search --config recipes/spos/cifar10.yaml --ckpt_path last.ckpt
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities.model_helpers import is_overridden

from lightning_nas.errors import find_user_error

LINKED_FROM_DATA = ("num_classes", "input_size")


class NASTrainer(Trainer):
    """A ``Trainer`` with a ``search`` entry point."""

    def search(self, model: LightningModule | None = None, dataloaders: Any = None,
               datamodule: LightningDataModule | None = None, ckpt_path: str | None = None,
               verbose: bool = True) -> Any:
        """Run the search callbacks (e.g. ``EvolutionSearch``) on a trained supernet, without training.

        Raises:
            ValueError: when no callback can search.
        """
        searchers = [cb for cb in self.callbacks if hasattr(cb, "run_on_validate")]
        if not searchers:
            raise ValueError(
                "`search` needs a search callback such as lightning_nas.callbacks.EvolutionSearch in "
                "trainer.callbacks; add one to the recipe."
            )
        for cb in searchers:
            cb.run_on_validate = True
        return self.validate(model, dataloaders, ckpt_path=ckpt_path, verbose=verbose, datamodule=datamodule)


class LoggerSaveConfigCallback(SaveConfigCallback):
    """Save the resolved config beside the run and log it to the loggers (W&B config)."""

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        for logger in trainer.loggers:
            logger.log_hyperparams(self.config.as_dict())


def _import(class_path: str) -> Any:
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _data_attributes(data_cfg: Any) -> dict[str, Any]:
    """``num_classes`` and ``input_size`` of the configured datamodule (construction reads no data)."""
    if data_cfg is None or not getattr(data_cfg, "class_path", None):
        return {}
    init = data_cfg.init_args.as_dict() if getattr(data_cfg, "init_args", None) is not None else {}
    data = _import(data_cfg.class_path)(**init)
    return {k: getattr(data, k) for k in LINKED_FROM_DATA if getattr(data, k, None) is not None}


def _link_into(model_cfg: Any, values: dict[str, Any]) -> None:
    """Write the datamodule's values into the model and its ``space``/``model`` arguments, where they exist."""
    init = getattr(model_cfg, "init_args", None)
    if init is None:
        return
    targets = [init]
    for nested in ("space", "model", "network_space"):
        sub = init.get(nested) if hasattr(init, "get") else None
        if sub is not None and getattr(sub, "init_args", None) is not None:
            targets.append(sub.init_args)
    for target in targets:
        for key, value in values.items():
            if key in target:
                target[key] = value


class LightningNASCLI(LightningCLI):
    """``LightningCLI`` that links ``num_classes``/``input_size`` from the datamodule into the model (and its space)."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {**LightningCLI.subcommands(), "search": {"model", "dataloaders", "datamodule"}}

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--test_after_fit", type=bool, default=False,
                            help="Run the test split with the final weights after fit and print its accuracy.")

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        # "never typed twice": the data set decides the number of classes and the input size
        _link_into(cfg.get("model"), _data_attributes(cfg.get("data")))

    def after_fit(self) -> None:
        cfg = self.config[self.subcommand]
        if not cfg.get("test_after_fit") or self.trainer.fast_dev_run or self.trainer.interrupted:
            return
        if is_overridden("test_step", self.model):
            self.trainer.test(self.model, datamodule=self.datamodule)


def _default_wandb_offline() -> None:
    """Log W&B runs offline unless the user is logged in, so recipes run with no API key."""
    netrc = Path.home() / ".netrc"
    logged_in = "WANDB_API_KEY" in os.environ or (netrc.exists() and "wandb" in netrc.read_text(errors="ignore"))
    if not logged_in and "WANDB_MODE" not in os.environ:
        os.environ["WANDB_MODE"] = "offline"


def cli_main(args: Any = None, run: bool = True) -> LightningNASCLI:
    """Build (and by default run) the CLI; ``args`` as LightningCLI's (a list or a dict)."""
    _default_wandb_offline()
    return LightningNASCLI(
        LightningModule, LightningDataModule, trainer_class=NASTrainer, subclass_mode_model=True,
        subclass_mode_data=True, save_config_callback=LoggerSaveConfigCallback,
        save_config_kwargs={"overwrite": True}, auto_configure_optimizers=False, args=args, run=run,
    )


def space_from_config(config: str | Path) -> Any:
    """The search space of a recipe's model, built with the recipe's datamodule's classes and size."""
    cli = cli_main(["--config", str(config)], run=False)
    space = getattr(cli.model, "space", None)
    if space is None:
        raise ValueError(f"the model of {str(config)!r} has no `space`")
    return space


def main() -> None:
    """Entry point of the ``lightning-nas`` console script.

    A :class:`~lightning_nas.errors.UserError` (a missing or wrong prerequisite, a bad arch or data root) ends
    the run with its one-line message and exit code 2, however deep jsonargparse wrapped it; every other
    exception keeps its traceback.
    """
    try:
        # LightningCLI reads sys.argv itself when args is None (passing it again triggers its args warning)
        cli_main(None if sys.argv[1:] else ["--help"])
    except Exception as err:
        found = find_user_error(err)
        if found is None:
            raise
        print(f"lightning-nas: error: {found}", file=sys.stderr)
        raise SystemExit(2) from None


__all__ = ["LightningNASCLI", "NASTrainer", "cli_main", "main", "space_from_config"]


if __name__ == "__main__":
    main()
