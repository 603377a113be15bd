"""Mixed-precision networks: load a trained float network, wrap its layers as fake-quantized ones, apply a
policy (per-layer weight/activation bits) and read/write HAQ's ``best_policy.json``.

:class:`QuantizedNetwork` is what the HAQ fine-tuning recipe trains; :class:`~lightning_nas.modules.haq.HAQModule`
searches the policy.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_nas.arch import ArchError
from lightning_nas.errors import MissingFileError, PrerequisiteError
from lightning_nas.nn.quantize import QuantConv2d, QuantLinear

__all__ = ["POLICY_FORMAT", "QuantizedNetwork", "apply_policy", "calibrate", "finetune", "load_network", "load_policy",
           "quant_layers", "quantize_network", "top1"]

POLICY_FORMAT = 1
TRAIN_RECIPES = ("cifar10", "cifar100", "digits", "imagenet", "tinyimagenet")  # recipes/train/<name>.yaml


# --- the network -------------------------------------------------------------------------------------
def _read(path: str, what: str, how: str) -> Any:
    if not Path(path).is_file():
        raise MissingFileError(f"{what} {str(path)!r} does not exist. {how}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # not a torch file at all (pickle, zip or tensor errors)
        kind = type(err).__name__
        raise PrerequisiteError(f"{what} {str(path)!r} is not a PyTorch checkpoint ({kind}). {how}") from None


def module_hparams(ckpt: Mapping[str, Any], cls: type) -> dict[str, Any]:
    """A checkpoint's ``hyper_parameters`` that ``cls`` takes (LightningCLI adds ``_class_path``/``_instantiator``)."""
    import inspect

    accepted = inspect.signature(cls.__init__).parameters
    return {k: v for k, v in dict(ckpt.get("hyper_parameters") or {}).items() if k in accepted and k != "self"}


def _train_first(path: str) -> str:
    """How the checkpoint at ``path`` is made: the train recipe whose output it is, when the path says."""
    import re

    found = re.search(r"runs/train-([\w-]+)/checkpoints/", str(path).replace("\\", "/"))
    if found and found.group(1) in TRAIN_RECIPES:
        return f"Train the network first: `lightning-nas fit --config recipes/train/{found.group(1)}.yaml` writes it."
    return ("Train the network first with a recipes/train/ recipe, e.g. `lightning-nas fit --config "
            "recipes/train/cifar10.yaml` (it writes runs/train-cifar10/checkpoints/last.ckpt), or give `network` + "
            "`weights` instead of `checkpoint`.")


def _from_checkpoint(path: str) -> nn.Module:
    from lightning_nas.modules.classification import ClassificationModule

    ckpt = _read(path, "HAQ input checkpoint", _train_first(path))
    hparams = module_hparams(ckpt, ClassificationModule)
    if not any(hparams.get(k) for k in ("network", "arch")):
        raise PrerequisiteError(
            f"HAQ input checkpoint {path!r} is not a ClassificationModule checkpoint (it does not record a `network` "
            "or `arch` to rebuild): train one with a recipes/train/ recipe, or give `network` + `weights` instead.")
    module = ClassificationModule(**{**hparams, "init": "inherit"} if hparams.get("arch") else hparams)
    module.load_state_dict(ckpt["state_dict"])
    return module.net


def load_network(checkpoint: str | None = None, network: str | None = None, weights: str | None = None,
                 num_classes: int = 10, allow_untrained: bool = False, model: nn.Module | None = None) -> nn.Module:
    """The trained float network: ``model`` itself, a ClassificationModule checkpoint, or a torchvision model + a
    local weights file.

    Raises:
        FileNotFoundError: naming a missing checkpoint/weights file and how to produce it.
        ValueError: when neither or both sources are given, or no weights without ``allow_untrained``.
    """
    given = [k for k, v in (("model", model), ("checkpoint", checkpoint), ("network", network)) if v is not None]
    if len(given) != 1:
        raise ValueError("give exactly one of `model` (an nn.Module), `checkpoint` (a ClassificationModule .ckpt) or "
                         f"`network` (a torchvision model name, with `weights`) to quantize (got {given or 'none'})")
    if model is not None:
        return model
    if checkpoint is not None:
        return _from_checkpoint(checkpoint)
    import torchvision

    net = torchvision.models.get_model(str(network), num_classes=num_classes)
    if weights is None:
        if not allow_untrained:
            raise ValueError(f"`weights` is missing for network {network!r}: HAQ quantizes a *trained* network. Give a "
                             "local state-dict file, or set `allow_untrained: true` to search a random network "
                             "(smoke tests only).")
        return net
    state = _read(weights, "weights file", f"Save one, e.g. `python -c \"import torch, torchvision; torch.save("
                  f"torchvision.models.get_model('{network}', weights='DEFAULT').state_dict(), '{weights}')\"` "
                  "(ImageNet classes), or pass a ClassificationModule checkpoint as `checkpoint`.")
    if "state_dict" in state:  # a Lightning checkpoint of a ClassificationModule
        state = {k.removeprefix("net."): v for k, v in state["state_dict"].items() if k.startswith("net.")}
    net.load_state_dict(state)
    return net


def quantize_network(net: nn.Module) -> nn.Module:
    """A copy of ``net`` with every ``Conv2d``/``Linear`` replaced by a (float, 32-bit) quantized layer."""
    net = copy.deepcopy(net)
    for module in list(net.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, (QuantConv2d, QuantLinear)):
                continue
            if isinstance(child, nn.Conv2d):
                setattr(module, child_name, QuantConv2d.from_conv(child))
            elif isinstance(child, nn.Linear):
                setattr(module, child_name, QuantLinear.from_linear(child))
    return net


def quant_layers(net: nn.Module) -> dict[str, QuantConv2d | QuantLinear]:
    return {n: m for n, m in net.named_modules() if isinstance(m, (QuantConv2d, QuantLinear))}


def apply_policy(net: nn.Module, policy: Mapping[str, Any]) -> nn.Module:
    """Set each quantized layer's bits (and, when given, ``act_max``/``act_signed``) from ``policy``.

    ``policy`` maps layer name → ``{"wbits", "abits", ["act_max", "act_signed", "quantizer", "w_range"]}`` or
    ``(wbits, abits)``.

    Raises:
        ArchError: naming an unknown or missing layer.
    """
    layers = quant_layers(net)
    unknown, missing = sorted(set(policy) - set(layers)), sorted(set(layers) - set(policy))
    if unknown or missing:
        raise ArchError(f"policy does not fit the network: unknown layers {unknown[:5]}, missing layers {missing[:5]} "
                        f"(the network has {len(layers)} quantized layers). Was it searched on another network?")
    for name, spec in policy.items():
        layer = layers[name]
        if isinstance(spec, Mapping):
            layer.load_quant_spec(spec)
        else:
            layer.wbits, layer.abits = (int(b) for b in spec)
    return net


# --- calibration, fine-tune, accuracy (one HAQ episode) ------------------------------------------------
def calibrate(net: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], device: torch.device) -> None:
    """Fresh quantization ranges from forwards of ``batches`` in eval mode (BatchNorm statistics untouched).

    Each quantized layer measures as its ``quantizer`` does (``begin_calibration``): ``"haq"`` from the float
    network, per batch (the official ``calibrate`` uses one), ``"ema"`` a moving average of quantized forwards.
    """
    net.eval()
    layers = quant_layers(net).values()
    for layer in layers:
        layer.begin_calibration()
    with torch.no_grad():
        for x, _ in batches:
            net(x.to(device))
    for layer in layers:
        layer.end_calibration()


def finetune(net: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], lr: float, weight_decay: float,
             device: torch.device) -> float:
    """One pass of SGD (momentum 0.9, a fresh optimizer) over ``batches``.

    Returns:
        The running top-1 of the pass (each batch scored in train mode just before its step): the accuracy the
        official HAQ ``_finetune`` returns and rewards.
    """
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    net.train()
    correct = total = 0
    with torch.enable_grad():
        for x, y in batches:
            y = y.to(device)
            logits = net(x.to(device))
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            correct += int((logits.detach().argmax(1) == y).sum())
            total += len(y)
    net.eval()
    return correct / max(total, 1)


@torch.no_grad()
def top1(net: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], device: torch.device) -> float:
    """Eval-mode top-1 of ``net`` over ``batches``, moved to ``device``."""
    net.eval()
    correct = total = 0
    for x, y in batches:
        correct += int((net(x.to(device)).argmax(1) == y.to(device)).sum())
        total += len(y)
    return correct / max(total, 1)


def load_policy(path: str) -> dict[str, Any]:
    """A ``best_policy.json`` written by :class:`HAQModule`.

    Raises:
        FileNotFoundError: naming the file and the search that writes it.
    """
    if not Path(path).is_file():
        raise MissingFileError(f"HAQ policy {str(path)!r} does not exist: run the search first, e.g. `lightning-nas "
                                "fit --config recipes/haq/cifar10.yaml` (it writes best_policy.json at fit end).")
    try:
        doc = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        doc = {}
    if not isinstance(doc, dict) or doc.get("format") != POLICY_FORMAT or "layers" not in doc:
        raise PrerequisiteError(f"{path!r} is not a HAQ policy file (format {POLICY_FORMAT} with a `layers` mapping): "
                                "use the best_policy.json that `lightning-nas fit --config recipes/haq/<data>.yaml` "
                                "writes.")
    return doc


class QuantizedNetwork(nn.Module):
    """A trained network with a mixed-precision policy applied: what the fine-tuning recipe trains.

    Args:
        policy: a ``best_policy.json`` (``None``: every layer at ``bits``).
        checkpoint: as :class:`HAQModule`.
        network: as :class:`HAQModule`.
        weights: as :class:`HAQModule`.
        num_classes: linked from the datamodule.
        allow_untrained: as :class:`HAQModule`.
        bits: uniform weight and activation bits when no ``policy`` is given (fixed-precision baselines).
        model: or the trained network itself (Python use).
    """

    def __init__(self, policy: str | None = None, checkpoint: str | None = None, network: str | None = None,
                 weights: str | None = None, num_classes: int = 10, allow_untrained: bool = False,
                 bits: int | None = None, model: nn.Module | None = None) -> None:
        super().__init__()
        if policy is None and bits is None:
            raise ValueError("QuantizedNetwork needs a `policy` (best_policy.json from HAQ) or uniform `bits`")
        doc = load_policy(policy) if policy is not None else None
        self.net = quantize_network(load_network(checkpoint, network, weights, num_classes, allow_untrained, model))
        if doc is not None:
            apply_policy(self.net, doc["layers"])
        else:  # unknown input signs without a profile: signed is always correct, at one bit of resolution
            uniform = {"wbits": bits, "abits": bits, "act_signed": True}
            apply_policy(self.net, {n: uniform for n in quant_layers(self.net)})

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
