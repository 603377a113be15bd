"""The ``lightning-nas`` console script: a ``LightningCLI`` over our modules, datamodules and recipes.

Subcommands: ``fit``, ``validate``, ``test``, ``predict`` (Lightning's) and ``search``, which runs the
search callbacks (``EvolutionSearch``) on a trained supernet checkpoint without training again::

    lightning-nas fit --config recipes/spos/cifar10.yaml
    lightning-nas search --config recipes/spos/cifar10.yaml --ckpt_path last.ckpt
"""

from __future__ import annotations

import importlib
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.trainer.states import TrainerStatus
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.model_helpers import is_overridden

from lightning_nas.checkpoints import (
    LIGHTNING_CKPT_KEYWORDS,
    check_checkpoint,
    check_checkpoint_class,
    load_checkpoint_safely,
)
from lightning_nas.errors import find_user_error
from lightning_nas.modules.nasrl import NASRLModule
from lightning_nas.modules.nasrl_data import NASRLData
from lightning_nas.search.interrupt import SearchInterrupted

LINKED_FROM_DATA = ("num_classes", "input_size")


class NASTrainer(Trainer):
    """A ``Trainer`` with a ``search`` entry point, whose ``fit`` never ends with a search silently skipped."""

    def fit(self, model: LightningModule, *args: Any, **kwargs: Any) -> None:
        """``Trainer.fit``, then the search, if the fit trained nothing (its checkpoint had finished training).

        A fit resumed from such a checkpoint runs no training hooks, so the search callbacks, which run at the end
        of training, would never run; here they run as ``search`` would, on the restored weights and search state.
        """
        searchers = [cb for cb in self.callbacks if hasattr(cb, "search_pending")]
        for cb in searchers:
            cb.finish_pending_after_fit = True
        super().fit(model, *args, **kwargs)
        if any(cb.search_pending for cb in searchers) and self.state.status == TrainerStatus.FINISHED:
            rank_zero_info(f"The checkpoint {self.ckpt_path} had finished training; running its unfinished search "
                           "now (as `lightning-nas search` with the same recipe and --ckpt_path would).")
            self.search(model, datamodule=self.datamodule)

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

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse, then check ``--ckpt_path`` as a file before LightningCLI reads its hyper-parameters into the config.

        LightningCLI loads the checkpoint right after parsing and replaces the model's settings by the ones it
        records (its class included), so a missing, unreadable or foreign file is refused here, in one line.
        """
        super().parse_arguments(parser, args)
        sub = self.config.get("subcommand")
        path = self.config[sub].get("ckpt_path") if sub else None
        if not path or (str(path) in LIGHTNING_CKPT_KEYWORDS and not Path(path).exists()):
            return
        ckpt = load_checkpoint_safely(path)
        model_path = getattr(self.config[sub].get("model"), "class_path", None)
        if model_path:
            check_checkpoint_class(ckpt, _import(model_path), f"--ckpt_path {str(path)!r}")

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        # "never typed twice": the data set decides the number of classes and the input size
        _link_into(cfg.get("model"), _data_attributes(cfg.get("data")))

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The trainer, with a DDP strategy that tolerates unused parameters for a single-path module."""
        trainer_cfg = self.config_init[self.subcommand]["trainer"] if self.subcommand else self.config_init["trainer"]
        strategy = trainer_cfg.get("strategy", "auto")
        chosen = tolerant_strategy(self.model, strategy, trainer_cfg.get("devices", "auto"),
                                   trainer_cfg.get("num_nodes", 1), trainer_cfg.get("accelerator", "auto"))
        if chosen != strategy:
            rank_zero_info(f"{type(self.model).__name__} leaves the candidates off its path without gradients: "
                           f"strategy {chosen} (was {strategy}).")
            kwargs["strategy"] = chosen
        return super().instantiate_trainer(**kwargs)

    def check_inputs(self) -> None:
        """Check data files, ``--ckpt_path``, constraints and latency tables before anything is written.

        Each check lives with what it checks: the datamodule's ``check_data()``, :func:`check_checkpoint`, and the
        callbacks' (and module's) ``check_before_run(module)``.
        """
        cfg = self.config_init[self.subcommand]
        check = getattr(self.datamodule, "check_data", None)
        if callable(check):
            check()
        if cfg.get("ckpt_path"):
            check_checkpoint(cfg["ckpt_path"], self.model)
        for owner in [self.model, *self.trainer.callbacks]:
            check = getattr(owner, "check_before_run", None)
            if callable(check):
                check(self.model)

    def before_fit(self) -> None:
        self.check_inputs()
        # NAS-RL's training steps are controller steps, not batches: Lightning iterates NASRLData's steps and the
        # recipe's datamodule feeds the children (`trainer.fit` receives `self.datamodule`)
        data = self.datamodule
        if isinstance(self.model, NASRLModule) and data is not None and not isinstance(data, NASRLData):
            self.datamodule = NASRLData(data)

    def before_validate(self) -> None:
        self.check_inputs()

    def before_test(self) -> None:
        self.check_inputs()

    def before_search(self) -> None:
        self.check_inputs()

    def after_fit(self) -> None:
        cfg = self.config[self.subcommand]
        if not cfg.get("test_after_fit") or self.trainer.fast_dev_run or self.trainer.interrupted:
            return
        if is_overridden("test_step", self.model):
            self.trainer.test(self.model, datamodule=self.datamodule)


DDP_TOLERANT = {"ddp": "ddp_find_unused_parameters_true", "ddp_spawn": "ddp_spawn_find_unused_parameters_true",
                "ddp_fork": "ddp_fork_find_unused_parameters_true",
                "ddp_notebook": "ddp_notebook_find_unused_parameters_true"}


def _device_count(devices: Any, accelerator: Any) -> int:
    """How many devices a ``devices`` setting asks for (1 when it cannot tell)."""
    if isinstance(devices, (list, tuple)):
        return len(devices)
    text = str(devices).strip()
    if text in ("auto", "-1"):
        import torch

        gpu = str(accelerator) in ("auto", "gpu", "cuda") and torch.cuda.is_available()
        return torch.cuda.device_count() if gpu else (1 if text == "auto" else os.cpu_count() or 1)
    if "," in text:
        return len([d for d in text.split(",") if d.strip()])
    return int(text) if text.lstrip("-").isdigit() else 1


def tolerant_strategy(model: Any, strategy: Any, devices: Any = "auto", num_nodes: Any = 1,
                      accelerator: Any = "auto") -> Any:
    """The strategy to use for ``model``: a DDP one that finds unused parameters when the module needs it.

    A module that sets ``needs_find_unused_parameters`` (the single-path methods: SPOS, ProxylessNAS, PARSEC) leaves
    the candidates off its path without gradients; plain DDP fails on them. ``auto`` on several devices or nodes
    becomes ``ddp_find_unused_parameters_true``, and ``ddp``/``ddp_spawn``/``ddp_fork``/``ddp_notebook`` their
    ``*_find_unused_parameters_true`` forms; any other choice (an instance, another name) is kept.
    """
    if not getattr(model, "needs_find_unused_parameters", False) or not isinstance(strategy, str):
        return strategy
    if strategy == "auto":
        several = _device_count(devices, accelerator) > 1 or int(num_nodes or 1) > 1
        return DDP_TOLERANT["ddp"] if several else strategy
    return DDP_TOLERANT.get(strategy, strategy)


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
    except SearchInterrupted as stop:
        print(f"lightning-nas: {stop.message}", file=sys.stderr)
        if stop.checkpoint:
            print(f"lightning-nas: resume: {resume_command(sys.argv, stop.checkpoint)}", file=sys.stderr)
        raise SystemExit(stop.code) from None
    except Exception as err:
        found = find_user_error(err)
        if found is None:
            raise
        print(f"lightning-nas: error: {found}", file=sys.stderr)
        raise SystemExit(2) from None


def resume_command(argv: list[str], ckpt: str) -> str:
    """``argv`` as a ``lightning-nas`` command, its ``--ckpt_path`` replaced by ``ckpt``."""
    args, skip = [], False
    for arg in argv[1:]:
        if skip:
            skip = False
        elif arg == "--ckpt_path":
            skip = True
        elif not arg.startswith("--ckpt_path="):
            args.append(arg)
    return " ".join(["lightning-nas", *(shlex.quote(a) for a in args), "--ckpt_path", shlex.quote(ckpt)])


__all__ = ["LightningNASCLI", "NASTrainer", "cli_main", "main", "resume_command", "space_from_config",
           "tolerant_strategy"]


if __name__ == "__main__":
    main()
