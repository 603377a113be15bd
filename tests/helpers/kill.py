"""A fit killed mid-run, for the exact-resume tests: ``Kill(at)`` raises ``Killed`` as batch ``at`` (counted over
the whole run) is about to start, so the checkpoints written before it stay behind."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback


class Killed(Exception):
    pass


class Kill(Callback):
    """Raise :class:`Killed` when training batch ``at`` (counted over the run) is about to start."""

    def __init__(self, at: int) -> None:
        self.at, self.seen = at, 0

    def on_train_batch_start(self, *args: Any) -> None:
        if self.seen == self.at:
            raise Killed
        self.seen += 1
