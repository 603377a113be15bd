"""Scoring one sub-network of a supernet: BatchNorm re-calibration, then top-1 accuracy.

Shared BatchNorm statistics of a supernet fit no single path, so each candidate's statistics are
recomputed on fixed training batches before it is scored (SPOS; OFA's ``set_running_statistics``).
The batches are collected once, moved to the device once, and reused for every candidate.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "GPU_CALIB_BATCH_SIZE",
    "accuracy",
    "calibration_batch_size",
    "collect_batches",
    "collect_inputs",
    "gather_scores",
    "recalibrate_bn",
    "restore_buffers",
    "restore_modes",
    "save_buffers",
    "save_modes",
    "supernet_preserved",
]

Forward = Callable[[Tensor], Tensor]
_BN = nn.modules.batchnorm._BatchNorm


def _split_batch(batch: Any) -> tuple[Tensor, Tensor | None]:
    if isinstance(batch, Tensor):
        return batch, None
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], Tensor):
        return batch[0], batch[1] if len(batch) > 1 else None
    raise TypeError(f"Expected a tensor or an (inputs, targets) tuple as a batch, got {type(batch).__name__}.")


def collect_inputs(loader: Iterable[Any], images: int, device: torch.device | str,
                   batch_size: int | None = None) -> list[Tensor]:
    """Whole batches of inputs from the start of ``loader`` covering ``images`` inputs, on ``device``.

    With the loader's batches that is its first ``ceil(images / loader batch size)`` batches; with
    ``batch_size``, the inputs are re-batched into ``ceil(images / batch_size)`` batches of that size
    (whole batches: re-calibration averages per batch, so a small last batch would weigh too much).

    Args:
        loader: yields tensors or ``(inputs, targets, ...)`` tuples.
        images: how many inputs to cover (fewer if the loader runs out).
        device: where the kept batches live.
        batch_size: the calibration batch size; ``None`` keeps the loader's batches.
    """
    chunks: list[Tensor] = []
    seen = 0
    for batch in loader:
        if seen >= images:
            break
        chunks.append(_split_batch(batch)[0].to(device))
        seen += chunks[-1].shape[0]
    if batch_size is None or not chunks:
        return chunks
    n = -(-images // batch_size) * batch_size
    return list(torch.cat(chunks)[:n].split(batch_size))


def collect_batches(loader: Iterable[Any], max_batches: int | None, device: torch.device | str
                    ) -> list[tuple[Tensor, Tensor]]:
    """The first ``max_batches`` ``(inputs, targets)`` batches of ``loader`` (all if ``None``), on ``device``."""
    out = []
    for batch in itertools.islice(loader, max_batches):
        x, y = _split_batch(batch)
        if y is None:
            raise TypeError("Scoring batches need targets: the loader must yield (inputs, targets).")
        out.append((x.to(device), y.to(device)))
    return out


def save_modes(model: nn.Module) -> dict[str, bool]:
    """Each submodule's ``training`` flag (a model may mix train and eval submodules)."""
    return {name: m.training for name, m in model.named_modules()}


def restore_modes(model: nn.Module, modes: dict[str, bool]) -> None:
    for name, m in model.named_modules():
        m.training = modes.get(name, m.training)


def save_buffers(model: nn.Module) -> dict[str, Tensor]:
    """Copies of every buffer (BatchNorm statistics, activation ranges, ...)."""
    return {name: b.detach().clone() for name, b in model.named_buffers()}


def restore_buffers(model: nn.Module, saved: dict[str, Tensor]) -> None:
    """Copy ``saved`` back into the model's buffers, in place."""
    with torch.no_grad():
        for name, b in model.named_buffers():
            if name in saved:
                b.copy_(saved[name])


@contextlib.contextmanager
def supernet_preserved(module: nn.Module, space: Any) -> Iterator[dict[str, Tensor]]:
    """Give back the supernet as it was: its buffers, its active arch and every submodule's train/eval mode.

    Args:
        module: the module holding ``space`` (its modes are saved and restored).
        space: the supernet, a ``SearchSpace`` (its buffers and ``active_arch``).

    Yields:
        The saved buffers (e.g. the trained BatchNorm statistics each candidate restarts from).
    """
    modes, previous = save_modes(module), space.active_arch
    buffers = save_buffers(space)
    try:
        yield buffers
    finally:
        restore_buffers(space, buffers)
        restore_modes(module, modes)
        if previous is not None:
            space.activate(previous, validate=False)


@contextlib.contextmanager
def _bn_cumulative(model: nn.Module) -> Iterator[list[_BN]]:
    bns = [m for m in model.modules() if isinstance(m, _BN) and m.track_running_stats]
    momenta = [m.momentum for m in bns]
    modes = save_modes(model)
    try:
        for m in bns:
            m.reset_running_stats()  # the full max-width buffers, for DynamicBatchNorm2d too
            m.momentum = None  # cumulative average over the calibration batches
        model.train()
        yield bns
    finally:
        for m, momentum in zip(bns, momenta):
            m.momentum = momentum
        restore_modes(model, modes)


def recalibrate_bn(model: nn.Module, batches: Sequence[Tensor], forward: Forward | None = None,
                   context: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext) -> None:
    """Recompute every BatchNorm's running statistics on ``batches`` (cumulative average).

    Only running statistics change: parameters are untouched, momenta and train/eval modes restored.

    Args:
        model: the module holding the BatchNorm layers.
        batches: calibration inputs (already on the model's device).
        forward: the forward to run (default ``model``), e.g. ``space`` after ``space.activate(arch)``.
        context: entered around the forwards (a precision autocast).
    """
    forward = forward if forward is not None else model
    with _bn_cumulative(model), torch.no_grad(), context():
        for x in batches:
            forward(x)


def accuracy(model: nn.Module, batches: Sequence[tuple[Tensor, Tensor]], forward: Forward | None = None,
             context: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext) -> float:
    """Top-1 accuracy of ``model`` in eval mode over ``batches`` (the model's modes are restored)."""
    forward = forward if forward is not None else model
    modes = save_modes(model)
    correct: Tensor | int = 0
    total = 0
    model.eval()
    try:
        with torch.no_grad(), context():
            for x, y in batches:
                correct = correct + (forward(x).argmax(dim=-1) == y).sum()  # stays on the device: one sync
                total += y.numel()
    finally:
        restore_modes(model, modes)
    return float(correct) / max(total, 1)


def gather_scores(trainer: Any, local: list[float], total: int, device: torch.device) -> list[float]:
    """All ranks' scores in candidate order, when rank ``r`` scored candidates ``r, r + W, ...`` of ``total``.

    ``trainer`` gives ``world_size`` and ``strategy.all_gather`` (a Lightning ``Trainer``).
    """
    world = trainer.world_size
    if world == 1 or total == 0:
        return local
    width = -(-total // world)
    padded = torch.full((width,), float("nan"), dtype=torch.float64, device=device)
    padded[: len(local)] = torch.tensor(local, dtype=torch.float64)
    # all_gather (not a CatMetric): the per-rank order must survive so every rank builds the same history
    gathered = trainer.strategy.all_gather(padded).reshape(world, width).cpu()
    return [float(gathered[i % world, i // world]) for i in range(total)]


GPU_CALIB_BATCH_SIZE = 1024
"""The calibration batch size on a CUDA device when none is given (issue 17's H100 scored a SPOS candidate in
1.15 s at 1,024 against 2.05 s at 256; ``benchmarks/calibration_ranking.py``: the ranking does not depend on it)."""


def calibration_batch_size(given: int | None, space: nn.Module) -> int | None:
    """The BatchNorm re-calibration batch size for ``space``'s device: ``given``, else
    :data:`GPU_CALIB_BATCH_SIZE` on CUDA, else ``None`` (the loader's own batch size)."""
    if given is not None:
        return given
    param = next(space.parameters(), None)
    return GPU_CALIB_BATCH_SIZE if param is not None and param.device.type == "cuda" else None
