"""``OptionLatency``: the InstaNAS reward's latency model, one CPU-timed entry per (cell, option).

A policy's latency is the sum of its on-options' entries plus the fixed stem and head. The official
``search/models/instanas.py`` also times every option on the CPU at start-up (``_profile``: mean of four
calls after one) and sums ``lat`` over the on-options, but without the stem and head, so its latency bounds
(``0.7 L_max``, ``0.5 L_mbv2``, ``L_min``) are fractions of the cells' time alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from lightning_nas.cost.timing import measure_ms

if TYPE_CHECKING:
    from lightning_nas.spaces.instanas import InstaNASSpace

__all__ = ["OptionLatency"]


class OptionLatency:
    """Measured latency of every option of every cell (ms), plus the fixed stem and head; additive per policy.

    A policy's latency is ``fixed_ms + Σ on-options`` (forced BasicBlocks counted). ``L_mbv2`` is the
    MobileNetV2 path (option 0 everywhere), ``L_max`` every option on, ``L_min`` nothing on (only the
    forced blocks).

    Args:
        option_ms: ``(cells, options)`` milliseconds.
        fixed_ms: stem and head milliseconds.
        meta: what it was measured for (``fingerprint``, ``input_size``, ``batch_size``, ``device``).
    """

    def __init__(self, option_ms: Tensor, fixed_ms: float, meta: dict[str, Any]) -> None:
        self.option_ms, self.fixed_ms, self.meta = option_ms.double(), float(fixed_ms), meta
        self.forced = torch.tensor(meta["forced"], dtype=torch.bool)

    @classmethod
    def build(cls, space: InstaNASSpace, batch_size: int = 1, warmup: int = 2, repeats: int = 5,
              threads: int | None = 1) -> OptionLatency:
        """Time each option at its input shape on the CPU (copies: the space itself is not moved).

        ``threads`` (default 1: one core, stable on a shared machine; ``None``: torch's current setting)
        is set for the measurement only.
        """
        previous = torch.get_num_threads()
        if threads is not None:
            torch.set_num_threads(threads)
        try:
            return cls._build(space, batch_size, warmup, repeats)
        finally:
            torch.set_num_threads(previous)

    @classmethod
    def _build(cls, space: InstaNASSpace, batch_size: int, warmup: int, repeats: int) -> OptionLatency:
        import copy

        *shapes, last = space.cell_input_shapes(batch_size, with_output=True)
        table = torch.zeros(space.num_cells, space.num_options)
        for i, (cell, shape) in enumerate(zip(space.cells, shapes)):
            x = torch.randn(shape)
            for j, op in enumerate(cell.options):
                op = copy.deepcopy(op).cpu().eval()
                table[i, j] = measure_ms(lambda: op(x), "cpu", warmup, repeats)
        x = torch.randn(batch_size, space.in_channels, space.input_size, space.input_size)
        stem, head = copy.deepcopy(space.stem).cpu().eval(), copy.deepcopy(space.head).cpu().eval()
        h = torch.randn(last)
        fixed = measure_ms(lambda: stem(x), "cpu", warmup, repeats) + measure_ms(lambda: head(h), "cpu", warmup,
                                                                                  repeats)
        meta = {"fingerprint": space.fingerprint(), "input_size": space.input_size, "batch_size": batch_size,
                "device": "cpu", "threads": torch.get_num_threads(), "options": list(space.option_names),
                "forced": space.forced_mask().tolist()}
        return cls(table, fixed, meta)

    def of(self, policy: Tensor) -> Tensor:
        """Per-sample latency (ms) of ``(batch, cells, options)`` policies (forced options added)."""
        policy = policy.detach().double().cpu()
        empty = (policy.sum(2, keepdim=True) == 0) & self.forced.any(1).view(1, -1, 1)
        policy = torch.where(empty & self.forced.unsqueeze(0), torch.ones_like(policy), policy)
        return self.fixed_ms + (policy * self.option_ms).sum((1, 2))

    @property
    def mbv2_ms(self) -> float:
        """Latency of the MobileNetV2 path (option 0 in every cell)."""
        return self.fixed_ms + float(self.option_ms[:, 0].sum())

    @property
    def max_ms(self) -> float:
        return self.fixed_ms + float(self.option_ms.sum())

    @property
    def min_ms(self) -> float:
        return self.fixed_ms + float((self.option_ms * self.forced).sum())

    def matches(self, space: InstaNASSpace, batch_size: int | None = None) -> bool:
        """Whether this table was measured for ``space`` (and ``batch_size``)."""
        ok = self.meta.get("fingerprint") == space.fingerprint() and self.meta.get("input_size") == space.input_size
        return ok and (batch_size is None or self.meta.get("batch_size") == batch_size)

    def state_dict(self) -> dict[str, Any]:
        """Primitives only (checkpoints load with ``weights_only=True``)."""
        return {"option_ms": self.option_ms.tolist(), "fixed_ms": self.fixed_ms, "meta": dict(self.meta)}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> OptionLatency:
        return cls(torch.tensor(state["option_ms"], dtype=torch.float64), state["fixed_ms"], dict(state["meta"]))

    def save(self, path: Any) -> None:
        import json
        from pathlib import Path

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.state_dict(), indent=1))

    @classmethod
    def load(cls, path: Any) -> OptionLatency:
        import json
        from pathlib import Path

        return cls.from_state_dict(json.loads(Path(path).read_text()))
