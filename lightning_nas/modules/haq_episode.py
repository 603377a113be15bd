"""The ingredients of one HAQ episode: the agent's view of the network, its actions, and the batches that score
a policy.

- :func:`layer_states` / :func:`rollout` / :func:`action_to_bits`: the DDPG agent walks the layers first → last,
  choosing weight then activation bits for each (the official ``LinearQuantizeEnv`` state and action).
- :class:`EpisodeBatches`: the fixed calibration, fine-tune and validation batches every policy is scored on (the
  same images every episode, so rewards compare policies, not batches).

:class:`~lightning_nas.modules.haq.HAQModule` runs the episodes; these pieces know nothing of Lightning.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import islice
from typing import Any, Literal

import torch
from torch import Tensor

from lightning_nas.controllers.ddpg import DDPG
from lightning_nas.cost.hardware import LayerProfile

__all__ = ["Batch", "EpisodeBatches", "action_to_bits", "layer_states", "rollout"]

Batch = tuple[Tensor, Tensor]


def action_to_bits(action: float, min_bits: int = 2, max_bits: int = 8) -> int:
    """HAQ's action → bit-width: ``round(b_min − 0.5 + a·(b_max − b_min + 1))``, clipped to ``[b_min, b_max]``.

    Every bit-width gets an equal share of ``[0, 1]``.
    """
    bits = round(min_bits - 0.5 + float(action) * (max_bits - min_bits + 1))
    return int(min(max(bits, min_bits), max_bits))


def layer_states(layers: Sequence[LayerProfile]) -> Tensor:
    """The static state of each layer: index, c_in, c_out, stride, kernel, depthwise, #weights, h×w.

    Each column is min–max normalised across layers to ``[0, 1]`` (a constant column becomes 0).
    """
    rows = [[i, p.in_channels, p.out_channels, p.stride, p.kernel_size, float(p.depthwise), p.n_weights, p.in_hw]
            for i, p in enumerate(layers)]
    x = torch.tensor(rows, dtype=torch.float64)
    lo, hi = x.min(0).values, x.max(0).values
    return ((x - lo) / (hi - lo).clamp_min(1e-12)).float()


def rollout(agent: DDPG, static: Tensor, episode: int, min_bits: int = 2, max_bits: int = 8,
            explore: bool = True) -> tuple[Tensor, Tensor, list[tuple[int, int]]]:
    """Let ``agent`` choose weight then activation bits for each layer, first → last.

    The state is the layer's static features, the previous action (bits / max bits; 1 at the start) and a
    flag (1 for the weight action, 0 for the activation action): 10 features.

    Returns:
        ``(states [2L, 10], actions [2L, 1], policy)``, the policy before the budget walk.
    """
    states, actions, policy = [], [], []
    prev = 1.0
    for row in static:
        bits = []
        for flag in (1.0, 0.0):
            state = torch.cat([row, torch.tensor([prev, flag])])
            action = agent.act(state, episode, explore)
            bits.append(action_to_bits(float(action[0]), min_bits, max_bits))
            states.append(state)
            actions.append(action)
            prev = bits[-1] / max_bits
        policy.append((bits[0], bits[1]))
    return torch.stack(states), torch.stack(actions), policy


class EpisodeBatches:
    """The batches that score every policy: ``batches("calib" | "finetune" | "val")``.

    Calibration and fine-tune batches come from the datamodule's fixed ``calibration_dataloader`` (its
    ``train_dataloader`` when it has none), validation batches from its ``val_dataloader``.

    Args:
        datamodule: the run's datamodule.
        calib_batches: batches that calibrate the ranges.
        finetune_batches: fine-tune batches; ``"epoch"``: the whole training part.
        val_batches: held-out batches (``None``: the whole validation split).
        cache: hold the batches in memory instead of re-reading them each episode.
    """

    def __init__(self, datamodule: Any, calib_batches: int, finetune_batches: int | Literal["epoch"],
                 val_batches: int | None, cache: bool) -> None:
        if datamodule is None:
            raise ValueError("HAQModule needs a datamodule: trainer.fit(model, datamodule=dm) (a recipe's `data:`)")
        finetune = None if finetune_batches == "epoch" else finetune_batches
        self.train_batches = None if finetune is None else max(calib_batches, finetune, 1)  # None: all
        self.counts: dict[str, int | None] = {"calib": calib_batches, "finetune": finetune, "val": val_batches}
        self.train_loader = (datamodule.calibration_dataloader(num_batches=self.train_batches)
                             if hasattr(datamodule, "calibration_dataloader") else datamodule.train_dataloader())
        self.val_loader = datamodule.val_dataloader()
        self.cache: dict[str, list[Batch]] | None = None
        if cache:
            self.cache = {"train": list(islice(self.train_loader, self.train_batches)),
                          "val": list(islice(self.val_loader, val_batches))}

    def __call__(self, which: Literal["calib", "finetune", "val"]) -> Iterable[Batch]:
        n = self.counts[which]
        if self.cache is not None:
            return self.cache["val"] if which == "val" else self.cache["train"][:n]
        return islice(self.val_loader if which == "val" else self.train_loader, n)
