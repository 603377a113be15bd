"""``InstaNASPolicy``: the InstaNAS controller, and the pure functions of its policy-gradient step.

The controller is a small ResNet (the official ``Policy32`` / ``Policy224``, ``search/models/controller.py``)
that outputs one sigmoid per (cell, option). Training (``InstaNASModule``'s controller epochs; official
``search/search.py``, ``train()``):

- encouragement ``p′ = α p + (1 − α)(1 − p)`` (α = 0.8) keeps every option explorable;
- a policy is sampled from ``Bernoulli(p′)``; the greedy policy ``p ≥ 0.5`` is the self-critical baseline;
- reward ``R = R_T · R_A``: ``R_A`` = ``correct_reward`` (30) if the prediction is right, else the
  reward is ``wrong_reward`` (0); ``R_T = max(0, −(T − UB)(T − LB) / ((UB − LB)² / 4))``, a parabola that is
  1 half-way between the latency bounds and 0 outside them;
- loss ``(−Σ log π(a) · (R(a) − R(greedy)) − β Σ H(p′)) / batch`` with β = 0.8 (``--beta``) and, as
  the official code has it, ``H(p′) = −p′ log p′`` only (``entropy="plogp"``): its maximum is at
  ``p′ = 1/e`` (``p ≈ 0.28``, greedy off), so the bonus pulls options *off*, towards faster policies.
  ``entropy="bernoulli"`` (our earlier default) uses the full Bernoulli entropy
  ``−p′ log p′ − (1 − p′) log(1 − p′)``, which pulls ``p′`` towards 0.5 and leaves the greedy policy
  undecided. With advantages often 0 (sample and greedy policy both wrong, or both outside the latency
  window) this term alone drives many updates, so the choice changes which policy is learnt.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ENTROPIES", "InstaNASPolicy", "encourage", "greedy_policy", "latency_bounds", "latency_reward",
           "policy_loss", "rewards", "sample_policy"]

ENTROPIES = ("plogp", "bernoulli")


class _BasicBlock(nn.Module):
    """ResNet's BasicBlock with a 1×1 projection shortcut where the shape changes."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.down = None
        if stride != 1 or in_ch != out_ch:
            self.down = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + (x if self.down is None else self.down(x)))


class InstaNASPolicy(nn.Module):
    """The controller: ``(batch, 3, H, W)`` images → ``(batch, cells, options)`` probabilities.

    Up to 64 px input the stem is a 3×3 conv (the official ``Policy32``'s ResNet-32, widths 16-32-64); above,
    a 7×7 stride-2 conv and a max-pool (the official ``Policy224``, widths 16-32-64-128). One BasicBlock per
    stage, global average pool, a linear layer, a sigmoid.

    Input pooling: the official ``Policy224`` average-pools its input 2× first; the official ``Policy32``
    (CIFAR) does not, it sees the full 32 px image. ``pool_input=None`` (default) does the same: pool only
    with the large stem. ``pool_input=True`` (our earlier default) pools at every size, four times cheaper
    on CIFAR and with a coarser view of the image; ``False`` never pools.

    Left as they are: our BasicBlocks use a 1×1 conv projection shortcut where the shape changes and a linear
    branch; the official ``Policy32`` zero-pads the channels of an average-pooled shortcut (``DownsampleB``)
    and its branch (``search/models/base.py``'s ``BasicBlock``) ends in ReLU6 before the residual sum.

    Args:
        num_cells: cells of the space.
        num_options: options per cell.
        input_size: the image size (picks the stem).
        width: stem width (stages double it).
        pool_input: average-pool the input 2× before the stem: ``None`` as the official code (only above
            64 px), ``True`` always, ``False`` never.

    Example::

        controller = InstaNASPolicy(17, 5, input_size=32)
        probs = controller(torch.randn(8, 3, 32, 32))  # (8, 17, 5)
    """

    def __init__(self, num_cells: int = 17, num_options: int = 5, input_size: int = 224, width: int = 16,
                 pool_input: bool | None = None) -> None:
        super().__init__()
        self.num_cells, self.num_options = num_cells, num_options
        large = input_size > 64
        self.pool_input = large if pool_input is None else bool(pool_input)
        if large:
            stem = [("conv", nn.Conv2d(3, width, 7, 2, 3, bias=False)), ("bn", nn.BatchNorm2d(width)),
                    ("relu", nn.ReLU(inplace=True)), ("pool", nn.MaxPool2d(3, 2, 1))]
        else:
            stem = [("conv", nn.Conv2d(3, width, 3, 1, 1, bias=False)), ("bn", nn.BatchNorm2d(width)),
                    ("relu", nn.ReLU(inplace=True))]
        self.stem = nn.Sequential(OrderedDict(stem))
        widths = [width, 2 * width, 4 * width] + ([8 * width] if large else [])
        blocks, in_ch = [], width
        for k, w in enumerate(widths):
            blocks.append(_BasicBlock(in_ch, w, 1 if k == 0 else 2))
            in_ch = w
        self.blocks = nn.Sequential(*blocks)
        self.logits = nn.Linear(in_ch, num_cells * num_options)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        if self.pool_input:
            x = F.avg_pool2d(x, 2)
        x = self.blocks(self.stem(x))
        logits = self.logits(F.adaptive_avg_pool2d(x, 1).flatten(1))
        return torch.sigmoid(logits).view(-1, self.num_cells, self.num_options)


def encourage(probs: Tensor, alpha: float = 0.8) -> Tensor:
    """``α p + (1 − α)(1 − p)``: probabilities kept inside ``[1 − α, α]`` so every option stays explorable."""
    return alpha * probs + (1 - alpha) * (1 - probs)


def greedy_policy(probs: Tensor) -> Tensor:
    """The deterministic policy ``p ≥ 0.5`` (0/1 floats): the self-critical baseline and the inference policy."""
    return (probs >= 0.5).to(probs.dtype)


def sample_policy(probs: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """A Bernoulli sample of ``probs`` (0/1 floats); drawn on the CPU generator so every device agrees."""
    u = torch.rand(probs.shape, generator=generator, dtype=torch.float32).to(probs.device)
    return (u < probs.detach()).to(probs.dtype)


def latency_bounds(progress: float, l_max: float, l_mbv2: float, l_min: float) -> tuple[float, float]:
    """``(UB, LB)`` at ``progress`` ∈ [0, 1] of the search: UB ``0.7 L_max`` → ``0.5 L_mbv2`` linearly, LB ``L_min``.

    UB never goes below ``1.05 LB`` (a space whose cheapest policy is slower than half of MobileNetV2
    would otherwise reward nothing).
    """
    progress = min(max(progress, 0.0), 1.0)
    start, end = 0.7 * l_max, 0.5 * l_mbv2
    return max(start - (start - end) * progress, 1.05 * l_min), l_min


def latency_reward(latency: Tensor, ub: float, lb: float) -> Tensor:
    """``R_T = max(0, −(T − UB)(T − LB) / ((UB − LB)² / 4))``: 1 at the middle of ``[LB, UB]``, 0 outside."""
    return torch.clamp(-(latency - ub) * (latency - lb) / ((ub - lb) ** 2 / 4), min=0.0)


def rewards(latency: Tensor, correct: Tensor, ub: float, lb: float, correct_reward: float = 30.0,
            wrong_reward: float = 0.0) -> Tensor:
    """Per-sample ``R = R_T · correct_reward`` when the prediction is right, ``wrong_reward`` otherwise."""
    return torch.where(correct, latency_reward(latency, ub, lb) * correct_reward,
                       torch.full_like(latency, wrong_reward))


def policy_loss(probs: Tensor, policy: Tensor, advantage: Tensor, entropy_weight: float = 0.8,
                entropy: str = "plogp") -> Tensor:
    """Self-critical REINFORCE loss with an entropy bonus, averaged over the batch.

    Args:
        probs: encouraged probabilities ``p′`` (with gradient), ``(batch, cells, options)``.
        policy: the sampled 0/1 policy.
        advantage: ``R(sample) − R(greedy)`` per sample, ``(batch,)``.
        entropy_weight: β of the entropy bonus.
        entropy: ``"plogp"`` (official: ``Σ −p′ log p′``, maximal at ``p′ = 1/e``) or ``"bernoulli"``
            (``Σ −p′ log p′ − (1 − p′) log(1 − p′)``, maximal at ``p′ = 0.5``).

    Raises:
        ValueError: an unknown ``entropy``.
    """
    if entropy not in ENTROPIES:
        raise ValueError(f"entropy must be one of {ENTROPIES}, got {entropy!r}")
    p = probs.clamp(1e-6, 1 - 1e-6)
    log_prob = (policy * torch.log(p) + (1 - policy) * torch.log(1 - p)).sum((1, 2))
    bonus = -p * torch.log(p)
    if entropy == "bernoulli":
        bonus = bonus - (1 - p) * torch.log(1 - p)
    return (-(log_prob * advantage.detach()) - entropy_weight * bonus.sum((1, 2))).mean()
