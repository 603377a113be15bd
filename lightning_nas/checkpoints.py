"""Checking a checkpoint before a run uses it: it exists, loads safely, and belongs to this model and space.

The CLI calls :func:`check_checkpoint` on ``--ckpt_path`` before anything is written (config, logger run,
checkpoints), so a wrong file costs one line, not a run folder::

    lightning-nas: error: --ckpt_path 'runs/train-cifar10/checkpoints/last.ckpt' is a checkpoint of
    ClassificationModule, but this recipe's model is SPOSModule: ...
"""

from __future__ import annotations

import importlib
import pickle
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule

from lightning_nas.errors import MissingFileError, PrerequisiteError

__all__ = ["LIGHTNING_CKPT_KEYWORDS", "check_checkpoint", "check_checkpoint_class", "load_checkpoint_safely"]

LIGHTNING_CKPT_KEYWORDS = ("last", "best", "hpc", "registry")
"""``ckpt_path`` values Lightning resolves itself (not file names)."""


def _reason(err: BaseException) -> str:
    """The first informative line of a load error, without torch's advice to load unsafely."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    for line in lines:
        if line.startswith("WeightsUnpickler error:"):
            return line.removeprefix("WeightsUnpickler error:").strip()
    safe = [line for line in lines if "weights_only" not in line and "Re-running" not in line]
    return f"{type(err).__name__}: {safe[0] if safe else 'unreadable'}"


def load_checkpoint_safely(path: str | Path, what: str = "--ckpt_path") -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` on the CPU (memory-mapped where the format allows).

    Raises:
        MissingFileError: no such file.
        PrerequisiteError: not a PyTorch checkpoint, or one holding objects a weights-only load refuses.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{what} {str(path)!r} does not exist; give the path of a checkpoint that a fit wrote "
                               "(e.g. <default_root_dir>/checkpoints/last.ckpt).")
    with open(path, "rb") as f:
        head = f.read(4)
    if not head.startswith(b"PK\x03\x04") and not head.startswith(b"\x80"):  # torch.save: a zip, or a pickle
        raise PrerequisiteError(f"{what} {str(path)!r} is not a PyTorch checkpoint (it starts with bytes {head!r}, "
                                "not a zip archive or a pickle). Give a .ckpt file that `lightning-nas fit` wrote.")
    try:
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:
            if "mmap" not in str(err):
                raise
            ckpt = torch.load(path, map_location="cpu", weights_only=True)  # the legacy (non-zip) format
    except pickle.UnpicklingError as err:
        weights_only = "Weights only load failed" in str(err) or "WeightsUnpickler" in str(err)
        detail = ("it holds Python objects that a safe (weights-only) load refuses: " if weights_only
                  else "it is not a PyTorch checkpoint: ") + _reason(err)
        raise PrerequisiteError(f"{what} {str(path)!r} cannot be used: {detail}. Give a .ckpt file that "
                                "`lightning-nas fit` wrote.") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise PrerequisiteError(f"{what} {str(path)!r} is not a PyTorch checkpoint ({_reason(err)}). Give a .ckpt "
                                "file that `lightning-nas fit` wrote.") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise PrerequisiteError(f"{what} {str(path)!r} is a PyTorch file but not a Lightning checkpoint (no "
                                "'state_dict'). Give a .ckpt file that `lightning-nas fit` wrote.")
    return ckpt


def _saved_class(ckpt: dict[str, Any]) -> tuple[str | None, type | None]:
    """The model class a CLI-made checkpoint records (``hyper_parameters._class_path``), imported if possible."""
    path = (ckpt.get("hyper_parameters") or {}).get("_class_path")
    if not isinstance(path, str):
        return None, None
    module, _, name = path.rpartition(".")
    try:
        return path, getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return path, None


def check_checkpoint_class(ckpt: dict[str, Any], model_class: type, where: str = "--ckpt_path") -> None:
    """Refuse a CLI-made checkpoint (it records ``hyper_parameters._class_path``) of another model class.

    Raises:
        PrerequisiteError: naming the checkpoint's class and this recipe's.
    """
    path, cls = _saved_class(ckpt)
    if path is None:
        return
    same = cls is model_class or (cls is not None and issubclass(model_class, cls))
    if not same and path.rpartition(".")[2] != model_class.__name__:
        raise PrerequisiteError(
            f"{where} is a checkpoint of {path.rpartition('.')[2]} ({path}), but this recipe's model is "
            f"{model_class.__name__}: give a checkpoint that a fit of this recipe (a {model_class.__name__}) wrote.")


def _check_keys(ckpt: dict[str, Any], model: LightningModule, where: str) -> None:
    if _saved_class(ckpt)[0] is not None or not getattr(model, "strict_loading", True):
        return
    saved, own = set(ckpt["state_dict"]), set(model.state_dict())
    if saved != own:  # Lightning would refuse it after writing the run folder; say it first, in one line
        missing, unexpected = sorted(own - saved), sorted(saved - own)
        raise PrerequisiteError(
            f"{where} does not hold the weights of this recipe's {type(model).__name__}: {len(missing)} of its "
            f"tensors are missing (e.g. {missing[:2]}) and {len(unexpected)} are unknown to it (e.g. "
            f"{unexpected[:2]}); it is a checkpoint of another model or space.")


def check_checkpoint(path: str | Path, model: LightningModule) -> None:
    """Refuse a checkpoint that is missing, unreadable, of another model class or of another space, in one line.

    Lightning's own ``ckpt_path`` keywords (``last``, ``best``, ``hpc``, ``registry``) are left to Lightning.

    Raises:
        MissingFileError: the file does not exist.
        PrerequisiteError: not a (safe) checkpoint, or one of another model class or space.
    """
    if str(path) in LIGHTNING_CKPT_KEYWORDS and not Path(path).exists():
        return
    ckpt = load_checkpoint_safely(path)
    where = f"--ckpt_path {str(path)!r}"
    check_checkpoint_class(ckpt, type(model), where)
    _check_keys(ckpt, model, where)
    space = getattr(model, "space", None)
    if space is not None and callable(getattr(space, "fingerprint", None)):
        from lightning_nas.modules.supernet import check_space_checkpoint

        try:
            check_space_checkpoint(space, ckpt)
        except PrerequisiteError as err:
            raise PrerequisiteError(f"{where}: {err}") from None
