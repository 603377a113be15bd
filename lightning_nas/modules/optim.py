"""Optimizer and schedule helpers shared by the method modules."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn


def split_decay(module: nn.Module, weight_decay: float, conv_linear_only: bool = False) -> list[dict]:
    """Parameter groups with weight decay on weights only.

    Args:
        module: the network.
        weight_decay: decay for the decayed group.
        conv_linear_only: decay only conv/linear weights (SPOS); otherwise every tensor of 2+ dims.
    """
    decay, no_decay = [], []
    if conv_linear_only:
        decayed = {id(m.weight) for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
        for p in module.parameters():
            if p.requires_grad:
                (decay if id(p) in decayed else no_decay).append(p)
    else:
        for p in module.parameters():
            if p.requires_grad:
                (decay if p.ndim > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(groups: Iterable[dict], name: str, lr: float, momentum: float = 0.9,
                    nesterov: bool = False) -> torch.optim.Optimizer:
    """SGD (with momentum) or AdamW over ``groups``.

    Raises:
        ValueError: for an unknown optimizer name.
    """
    name = name.lower()
    if name == "sgd":
        return torch.optim.SGD(list(groups), lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0)
    if name == "adamw":
        return torch.optim.AdamW(list(groups), lr=lr)
    raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {name!r}")


def warmup_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0,
                    decay: str = "cosine", min_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step LR: linear warm-up, then cosine or linear decay to ``min_ratio`` × the base LR.

    Raises:
        ValueError: for an unknown decay name.
    """
    if decay not in ("cosine", "linear", "constant"):
        raise ValueError(f"lr decay must be 'cosine', 'linear' or 'constant', got {decay!r}")
    total = max(1, total_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if decay == "constant":
            return 1.0
        t = min(1.0, (step - warmup_steps) / max(1, total - warmup_steps))
        shape = 0.5 * (1 + math.cos(math.pi * t)) if decay == "cosine" else 1 - t
        return min_ratio + (1 - min_ratio) * shape

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
