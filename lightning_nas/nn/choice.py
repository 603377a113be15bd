"""The protocol every choice module follows, and the generic freeze (export) of a module tree."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from torch import nn


class Choice(nn.Module):
    """Base of modules that own decisions or whose shape follows one.

    Subclasses implement:

    - ``choice_decisions()``: the decisions this module owns, ``{name: [values]}`` (may be empty for
      ops whose shape only follows another module's decision);
    - ``activate_choice(arch)``: read the values this module needs from a (validated) arch;
    - ``freeze()``: a plain module for the active setting, weights copied, no choice modules left.

    Modules that share a decision name share one decision (a block's width drives several convs).
    """

    def choice_decisions(self) -> dict[str, list[Any]]:
        return {}

    def activate_choice(self, arch: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def freeze(self) -> nn.Module:
        raise NotImplementedError


def _copy_param(p: nn.Parameter | None) -> nn.Parameter | None:
    return None if p is None else nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad)


def freeze_module(module: nn.Module) -> nn.Module:
    """Copy ``module`` with every choice module replaced by its frozen active setting.

    Unchosen candidates are never copied. Supernet BatchNorm without affine parameters becomes an
    affine BatchNorm with weight 1 and bias 0 (the same function), ready for retraining.
    """
    if isinstance(module, Choice):
        return module.freeze()
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not module.affine:
        return affine_batchnorm(module)
    new = copy.copy(module)
    new._parameters = {k: _copy_param(p) for k, p in module._parameters.items()}
    new._buffers = {k: None if b is None else b.detach().clone() for k, b in module._buffers.items()}
    new._modules = {k: None if m is None else freeze_module(m) for k, m in module._modules.items()}
    return new


def affine_batchnorm(bn: nn.modules.batchnorm._BatchNorm, channels: int | None = None) -> nn.BatchNorm2d:
    """A plain affine ``BatchNorm2d`` computing what ``bn`` computes on its first ``channels`` channels."""
    c = channels if channels is not None else bn.num_features
    out = nn.BatchNorm2d(c, eps=bn.eps, momentum=bn.momentum, affine=True, track_running_stats=bn.track_running_stats)
    out = out.to(device=bn.running_mean.device if bn.running_mean is not None else "cpu")
    if bn.affine:
        out.weight.data.copy_(bn.weight.detach()[:c])
        out.bias.data.copy_(bn.bias.detach()[:c])
    if bn.track_running_stats:
        out.running_mean.copy_(bn.running_mean[:c])
        out.running_var.copy_(bn.running_var[:c])
        out.num_batches_tracked.copy_(bn.num_batches_tracked)
    out.train(bn.training)
    return out
