"""Stopping a search cleanly on SIGTERM or SIGINT: at the next candidate, with its state saved.

SIGTERM is Lightning's: its handler sets ``trainer.received_sigterm`` (and keeps SLURM's requeue handling);
SIGINT (Ctrl+C) is caught here for the length of the search, so the candidate being scored finishes and the
state is saved; a second Ctrl+C aborts at once. The search then raises :class:`SearchInterrupted`, a
``SystemExit`` (as Lightning's own ``SIGTERMException``) whose exit code is non-zero and whose message says
how to resume.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

__all__ = ["SearchInterrupted", "StopRequests"]

EXIT_CODES = {"SIGINT": 128 + signal.SIGINT, "SIGTERM": 128 + signal.SIGTERM}


class SearchInterrupted(SIGTERMException):
    """A search stopped by a signal after saving its state.

    Attributes:
        signal_name: ``"SIGTERM"`` or ``"SIGINT"``.
        message: one line: what stopped, where the state is, how to resume.
        checkpoint: the checkpoint to resume from (``None`` if none was written).
    """

    def __init__(self, signal_name: str, message: str, checkpoint: str | None = None) -> None:
        super().__init__(EXIT_CODES.get(signal_name, 1))
        self.signal_name, self.message, self.checkpoint = signal_name, message, checkpoint

    def __str__(self) -> str:
        return self.message


class StopRequests:
    """Whether a stop was asked for: SIGTERM through the trainer, SIGINT through a handler held during the search."""

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.signal_name: str | None = None

    @contextlib.contextmanager
    def catching_sigint(self) -> Iterator[None]:
        """Turn the first Ctrl+C into a stop request (main thread only; signals are delivered there)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = signal.getsignal(signal.SIGINT)
        signal.signal(signal.SIGINT, self._on_sigint)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self.signal_name == "SIGINT":
            raise KeyboardInterrupt  # the second Ctrl+C: no waiting
        self.signal_name = "SIGINT"
        rank_zero_info(f"{self.owner}: Ctrl+C: stopping after the current candidate (press again to abort now).")

    def requested(self, trainer: Trainer) -> str | None:
        """The signal that asked this rank to stop, if any."""
        if self.signal_name is None and trainer.received_sigterm:
            self.signal_name = "SIGTERM"
        return self.signal_name

    def agreed(self, trainer: Trainer) -> bool:
        """Whether any rank was asked to stop (every rank calls this at the same point)."""
        # all ranks stop together: a rank that went on alone would wait forever in the next all_gather
        return bool(trainer.strategy.reduce_boolean_decision(self.requested(trainer) is not None, all=False))
