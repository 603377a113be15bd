"""``ClassificationModule``: train any network — a torchvision model or a found architecture."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from lightning_nas.arch import ArchError, load_arch, read_arch_file
from lightning_nas.modules.optim import build_optimizer, split_decay, warmup_schedule


def reset_parameters(module: nn.Module) -> nn.Module:
    """Re-initialise every layer that can (training from scratch)."""
    for m in module.modules():
        if m is not module and hasattr(m, "reset_parameters"):
            m.reset_parameters()
    return module


def space_of_arch_file(path: str, num_classes: int, input_size: int, allow_settings_change: bool = False) -> Any:
    """The space an arch file was searched in, rebuilt from its recorded class and settings for this data set.

    ``num_classes`` is the data set's (an arch moves between data sets); the input size must be the one it was
    searched at unless ``allow_settings_change``.

    Raises:
        ArchError: the file records no space class (written before format 2: give ``space``), or another input size.
    """
    import importlib

    doc = read_arch_file(path)
    if "space_class" not in doc or "settings" not in doc:
        raise ArchError(f"Arch file {path!r} does not record its space's class and settings (written before format "
                        "2): give the space it was searched in as `space` (--model.init_args.space=...).")
    module, _, name = str(doc["space_class"]).rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    settings = {**doc["settings"], "num_classes": num_classes}
    if "input_size" in settings and settings["input_size"] != input_size:
        if not allow_settings_change:
            raise ArchError(f"Arch file {path!r} was searched at input_size={settings['input_size']}, but the data "
                            f"set has input_size={input_size}: use that data set, or set `allow_settings_change: "
                            "true` to build the space at the new size on purpose.")
        settings["input_size"] = input_size
    return cls(**settings)


def build_network(model: nn.Module | None, network: str | None, space: Any, arch: str | None, num_classes: int,
                  input_size: int, init: str, allow_settings_change: bool = False) -> nn.Module:
    """The network to train from exactly one of ``model``, ``network`` (torchvision) or ``arch`` (+ ``space``).

    An arch JSON without ``space`` is built in the space the file records (its class and settings).

    Raises:
        ValueError: when none or several are given, or ``init`` is unknown.
    """
    given = [n for n, v in (("model", model), ("network", network), ("arch", arch)) if v is not None]
    if len(given) != 1:
        raise ValueError(f"give exactly one of model, network or arch to ClassificationModule (got {given or 'none'})")
    if init not in ("scratch", "inherit"):
        raise ValueError(f"init must be 'scratch' (retrain) or 'inherit' (fine-tune supernet weights), got {init!r}")
    if model is not None:
        return model
    if network is not None:
        import torchvision

        return torchvision.models.get_model(network, num_classes=num_classes)
    if Path(str(arch)).suffix != ".json":
        from lightning_nas.spaces.registry import get_published

        entry = get_published(str(arch))
        space = entry.build_space(num_classes=num_classes, input_size=input_size)
        chosen = entry.arch
    else:
        if space is None:
            space = space_of_arch_file(str(arch), num_classes, input_size, allow_settings_change)
        chosen = load_arch(str(arch), space, allow_settings_change=allow_settings_change)
    net = space.export(chosen)
    return reset_parameters(net) if init == "scratch" else net


class ClassificationModule(LightningModule):
    """Train a classifier: the "retrain the found architecture" half of every method.

    Args:
        model: any ``nn.Module`` producing logits.
        network: or a torchvision model name (``"resnet18"``), built with ``num_classes`` outputs.
        space: the search space an ``arch`` JSON belongs to (default: the space the file records, built for
            this data set's classes).
        arch: or an arch JSON path or the name of a published arch in the registry.
        allow_settings_change: build an arch JSON in a ``space`` with other settings than it was searched in
            (another width, depth or input size) on purpose; without it that is an error naming the settings.
        init: ``"scratch"`` re-initialises an exported arch; ``"inherit"`` keeps the supernet weights.
        num_classes: number of classes (linked from the datamodule by the CLI).
        input_size: input resolution (linked from the datamodule by the CLI).
        optimizer: ``"sgd"`` or ``"adamw"``.
        lr: peak learning rate.
        momentum: SGD momentum.
        nesterov: Nesterov momentum.
        weight_decay: decay on weights (not on BatchNorm or biases).
        warmup_epochs: linear warm-up length.
        lr_decay: ``"cosine"``, ``"linear"`` or ``"constant"`` after warm-up.
        label_smoothing: label smoothing of the cross-entropy.
        aux_weight: weight of an auxiliary head's loss, for networks whose training forward returns
            ``(logits, aux_logits)`` (DARTS-style retraining; 0.4 as DARTS).
        drop_path: for networks with a ``drop_path_prob`` attribute, its final value; it ramps linearly from 0
            over the epochs, as DARTS retrains (0 keeps the network's own setting).
    """

    def __init__(
        self, model: nn.Module | None = None, network: str | None = None, space: nn.Module | None = None,
        arch: str | None = None, init: str = "scratch", num_classes: int = 10, input_size: int = 32,
        optimizer: str = "sgd", lr: float = 0.1, momentum: float = 0.9, nesterov: bool = True,
        weight_decay: float = 5e-4, warmup_epochs: float = 0.0, lr_decay: str = "cosine",
        label_smoothing: float = 0.1, aux_weight: float = 0.4, drop_path: float = 0.0,
        allow_settings_change: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model", "space"])
        self.net = build_network(model, network, space, arch, num_classes, input_size, init, allow_settings_change)
        top5 = min(5, num_classes)
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_top5 = MulticlassAccuracy(num_classes, top_k=top5, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_top5 = MulticlassAccuracy(num_classes, top_k=top5, average="micro")

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def on_train_epoch_start(self) -> None:
        if self.hparams.drop_path > 0 and hasattr(self.net, "drop_path_prob"):
            epochs = max(1, self.trainer.max_epochs or 1)
            self.net.drop_path_prob = self.hparams.drop_path * self.current_epoch / epochs

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        out = self(x)
        smoothing = self.hparams.label_smoothing
        if isinstance(out, (tuple, list)):  # (logits, auxiliary logits)
            logits = out[0]
            loss = F.cross_entropy(logits, y, label_smoothing=smoothing)
            loss = loss + self.hparams.aux_weight * F.cross_entropy(out[1], y, label_smoothing=smoothing)
        else:
            logits = out
            loss = F.cross_entropy(logits, y, label_smoothing=smoothing)
        acc = (logits.argmax(1) == y).float().mean()
        self.log_dict({"train/loss": loss, "train/acc": acc}, prog_bar=True, batch_size=len(y))
        return loss

    def _eval_step(self, batch: tuple[Tensor, Tensor], stage: str, acc: Any, top5: Any) -> None:
        x, y = batch
        logits = self(x)
        acc(logits, y)
        top5(logits, y)
        self.log(f"{stage}/loss", F.cross_entropy(logits, y), batch_size=len(y), sync_dist=True)
        self.log_dict({f"{stage}/acc": acc, f"{stage}/acc_top5": top5}, prog_bar=stage == "val", batch_size=len(y))

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val", self.val_acc, self.val_top5)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test", self.test_acc, self.test_top5)

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        return self(x).argmax(1)

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        groups = split_decay(self.net, hp.weight_decay)
        optimizer = build_optimizer(groups, hp.optimizer, hp.lr, hp.momentum, hp.nesterov)
        total = int(self.trainer.estimated_stepping_batches)
        per_epoch = total / max(1, self.trainer.max_epochs or 1)
        schedule = warmup_schedule(optimizer, total, int(hp.warmup_epochs * per_epoch), hp.lr_decay)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


__all__ = ["ClassificationModule", "build_network", "reset_parameters"]
