"""Stopping a search cleanly on SIGTERM or SIGINT: at the next candidate, with its state saved; and resuming it.

SIGTERM is Lightning's: its handler sets ``trainer.received_sigterm`` (and keeps SLURM's requeue handling);
SIGINT (Ctrl+C) is caught here for the length of the search, so the candidate being scored finishes and the
state is saved; a second Ctrl+C aborts at once. The search then raises :class:`SearchInterrupted`, a
``SystemExit`` (as Lightning's own ``SIGTERMException``) whose exit code is non-zero and whose message says
how to resume.

The resume point is ``search_state.json`` in the search's root folder (:func:`write_state`, rewritten after every
generation) or the callback's state in a checkpoint; :func:`resume_point` picks, of those saved with the same
settings, the one furthest on.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

__all__ = [
    "STATE_FILE",
    "SearchInterrupted",
    "StopRequested",
    "StopRequests",
    "read_state",
    "resume_point",
    "save_and_interrupt",
    "write_state",
]

STATE_FILE = "search_state.json"

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


class StopRequested(Exception):
    """Raised inside a search by :meth:`StopRequests.check` when the ranks agreed to stop; carries the signal."""

    def __init__(self, signal_name: str) -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name


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

    def check(self, trainer: Trainer) -> None:
        """Raise :class:`StopRequested` if any rank was asked to stop (every rank calls this at the same point)."""
        if self.agreed(trainer):
            raise StopRequested(self.requested(trainer) or "SIGTERM")


def save_and_interrupt(owner: str, trainer: Trainer, out_dir: Path | None, signal_name: str, scored: int,
                       state: Mapping[str, Any]) -> SearchInterrupted:
    """Save a stopped search and say how to resume it (every rank calls it: the checkpoint is written together).

    Rank 0 writes ``state`` to ``<out_dir>/search_state.json``; every rank then saves ``search_interrupted.ckpt``
    (the trained weights and the callbacks' states: resumable on any machine). ``out_dir`` ``None`` (``fast_dev_run``):
    nothing is saved.

    Returns:
        The :class:`SearchInterrupted` to raise.
    """
    if out_dir is None:
        return SearchInterrupted(signal_name, f"{owner} stopped by {signal_name} after {scored} "
                                              "candidates (fast_dev_run: nothing saved).")
    if trainer.is_global_zero:
        write_state(out_dir / STATE_FILE, state)
    ckpt = out_dir / "search_interrupted.ckpt"
    trainer.save_checkpoint(ckpt)
    command = "lightning-nas search" if trainer.state.fn == TrainerFn.VALIDATING else "lightning-nas fit"
    return SearchInterrupted(
        signal_name,
        f"{owner} stopped by {signal_name} after {scored} scored candidates; its state is saved in "
        f"{out_dir / STATE_FILE} and {ckpt}. Resume: rerun the same `{command}` command with --ckpt_path {ckpt}",
        checkpoint=str(ckpt),
    )


def write_state(path: Path, state: Mapping[str, Any]) -> None:
    """Write a search's resume point atomically: a search killed while writing keeps the previous one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, path)


def read_state(path: Path) -> dict[str, Any] | None:
    """The resume point saved at ``path``, or ``None`` if there is none."""
    return json.loads(path.read_text()) if path.is_file() else None


def resume_point(saved: Iterable[Mapping[str, Any] | None], settings: Mapping[str, Any]) -> dict[str, Any] | None:
    """Of the saved states with exactly these settings, the furthest on (most generations, then most scores).

    A state is ``{"settings", "runs": [{"generation", ...}], "cache": {arch: score}}``; ``None`` entries are skipped.
    """
    matching = [dict(s) for s in saved if s is not None and s.get("settings") == settings]
    return max(matching, key=lambda s: (sum(r.get("generation", 0) for r in s["runs"]), len(s.get("cache", {}))),
               default=None)
