"""Where a search's answer goes: one function for every method.

Each run writes into its own folder, ``<root>/<kind>-<YYYYmmdd-HHMMSS>/`` (``root`` is the recipe's
``default_root_dir``), so a second search never overwrites the first one's answer or history. The answer,
``best_arch.json``, is also copied to ``<root>/best_arch.json``: the latest answer, where the next recipe
(``recipes/retrain.yaml``) looks by default. The copy names the run folder it came from.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_info

from lightning_nas.arch import save_arch

__all__ = ["next_command", "publish_arch", "run_folder"]


def run_folder(root: str | Path, kind: str) -> Path:
    """A new folder ``<root>/<kind>-<time>`` for this run's outputs (a suffix keeps two runs in one second apart).

    Call it on the rank that writes (rank 0): the name depends on the clock.
    """
    root = Path(root)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder, n = root / f"{kind}-{stamp}", 1
    while folder.exists():
        n += 1
        folder = root / f"{kind}-{stamp}-{n}"
    folder.mkdir(parents=True)
    return folder


RETRAIN_DATA = ("lightning_nas.datamodules.CIFAR10DataModule", "data/cifar10")
"""``recipes/retrain.yaml``'s data: its datamodule class and ``data_dir``."""


def next_command(path: str | Path, data: Any = None) -> str:
    """The command that retrains the arch in ``path`` (its space is read from the file) on ``data``, the search's
    datamodule: where it is not the retrain recipe's (CIFAR-10 in ``data/cifar10``) the command names it."""
    command = f"lightning-nas fit --config recipes/retrain.yaml --model.init_args.arch {path}"
    if data is None:
        return command
    cls = type(data)
    module = cls.__module__
    if module.startswith("lightning_nas.datamodules."):
        module = "lightning_nas.datamodules"  # the public name the recipes use
    class_path = f"{module}.{cls.__qualname__}"
    if class_path != RETRAIN_DATA[0]:
        command += f" --data {class_path}"
    data_dir = getattr(data, "data_dir", None)
    if data_dir is not None and cls.__name__ != "DigitsDataModule" and str(data_dir) != RETRAIN_DATA[1]:
        command += f" --data.init_args.data_dir {data_dir}"
    return command


def publish_arch(arch: Mapping[str, Any], space: Any, folder: str | Path, root: str | Path | None = None,
                 name: str = "best_arch", announce: bool = True, data: Any = None, **meta: Any) -> Path:
    """Write a search's answer: ``<folder>/<name>.json`` (the run's own copy) and ``<root>/<name>.json`` (latest).

    Args:
        arch: the found arch.
        space: its search space (its class, settings and fingerprint go into the file).
        folder: this run's folder (see :func:`run_folder`).
        root: where the next recipe looks (the recipe's ``default_root_dir``); ``None``: only the run's copy.
        name: the file's stem.
        announce: log where it is and the command that retrains it.
        data: the search's datamodule, for that command (:func:`next_command`).
        **meta: JSON-serialisable fields stored beside the arch (score, costs, ...).

    Returns:
        The latest copy's path (the run's copy when ``root`` is ``None``).
    """
    own = save_arch(arch, Path(folder) / f"{name}.json", space, **meta)
    latest = own
    if root is not None and Path(root).resolve() != Path(folder).resolve():
        latest = Path(root) / f"{name}.json"
        latest.parent.mkdir(parents=True, exist_ok=True)
        doc = json.loads(own.read_text())
        doc["run_folder"] = str(Path(folder))
        tmp = latest.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
        shutil.move(str(tmp), str(latest))
    if announce:
        rank_zero_info(f"Found arch: {latest} (run folder {folder}). Retrain it: {next_command(latest, data)}")
    return latest
