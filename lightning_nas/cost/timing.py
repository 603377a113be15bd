"""Timing many small modules robustly: interleaved rounds, medians, their spread, and a progress line.

A latency table times every candidate of every unit. Timing each one's repeats back to back lets one
burst of load on a shared machine inflate one candidate by 100× (a shuffle3x3 at 309 ms next to a
shuffle5x5 at 0.72 ms). Here every job is timed once per *round*, the rounds interleaved over all
jobs, so a burst hits one round of several jobs instead of every repeat of one; a job's latency is the
median of its round medians and its *spread* ``(max − min) / median`` over the rounds says how much to
trust it.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import torch

__all__ = ["Progress", "RoundTimer", "measure_ms", "spread"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_ms(fn: Callable[[], Any], device: torch.device | str = "cpu", warmup: int = 5, repeats: int = 20) -> float:
    """Median wall time of ``fn()`` in milliseconds after ``warmup`` calls (CUDA synchronised)."""
    device = torch.device(device)
    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def spread(values: Sequence[float]) -> float:
    """``(max − min) / median`` of ``values`` (0 for one value or a zero median)."""
    mid = statistics.median(values)
    return (max(values) - min(values)) / mid if len(values) > 1 and mid > 0 else 0.0


class Progress:
    """``<label>: done/total timings, seconds`` on stderr: redrawn in place on a terminal, every 10 s otherwise.

    Silent on ranks other than 0 and when ``enabled`` is false.
    """

    def __init__(self, label: str, total: int, enabled: bool = True, stream: TextIO | None = None) -> None:
        self.label, self.total, self.done = label, total, 0
        self.stream = stream or sys.stderr
        self.enabled = enabled and int(os.environ.get("RANK", "0")) == 0
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = self.last = time.perf_counter()

    def add(self, total: int) -> None:
        """More work than planned (re-measurements)."""
        self.total += total

    def step(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self.last >= (0.2 if self.tty else 10.0):
            self.last = now
            self._write("\r" if self.tty else "", "" if self.tty else "\n")

    def close(self, note: str = "") -> None:
        self._write("\r" if self.tty else "", f"{note}\n")

    def _write(self, head: str, tail: str) -> None:
        if self.enabled:
            elapsed = time.perf_counter() - self.start
            self.stream.write(f"{head}{self.label}: {self.done}/{self.total} timings, {elapsed:.1f} s{tail}")
            self.stream.flush()


class RoundTimer:
    """Time jobs in ``rounds`` interleaved rounds of ``repeats // rounds`` calls each (after a short warm-up).

    Args:
        device: where the jobs run (CUDA is synchronised around each call).
        warmup: untimed calls per job, spread over the rounds (at least one per round).
        repeats: timed calls per job over all rounds.
        rounds: interleaved rounds (at most ``repeats``).
        progress: counts one step per job and round.
    """

    def __init__(self, device: torch.device, warmup: int, repeats: int, rounds: int, progress: Progress) -> None:
        self.device, self.progress = device, progress
        self.rounds = max(1, min(rounds, repeats))
        self.per_round = max(1, repeats // self.rounds)
        self.warmup = max(1, -(-warmup // self.rounds))

    def time(self, jobs: Sequence[Callable[[], Any]], samples: list[list[float]] | None = None) -> list[list[float]]:
        """Each job's round medians (ms), appended to ``samples`` when given (a re-measurement)."""
        samples = samples if samples is not None else [[] for _ in jobs]
        for _ in range(self.rounds):
            for job, kept in zip(jobs, samples):
                kept.append(measure_ms(job, self.device, self.warmup, self.per_round))
                self.progress.step()
        return samples

    def settle(self, jobs: Sequence[Callable[[], Any]], max_spread: float, retries: int,
               floor_ms: float = 0.05) -> tuple[list[float], list[float], int, list[int]]:
        """Median and spread per job; a noisy job is timed again (``retries`` times at most), fresh rounds replacing
        its old ones when they agree better.

        A job is noisy when its spread exceeds ``max_spread`` and its rounds differ by more than ``floor_ms``
        (microsecond ops on a CPU always jitter by some 100 %; that moves no sum).

        Returns:
            ``(medians, spreads, jobs timed again, jobs still noisy)``.
        """
        samples = self.time(jobs)

        def noisy() -> list[int]:
            return [i for i, s in enumerate(samples) if spread(s) > max_spread and max(s) - min(s) > floor_ms]

        again = 0
        for _ in range(retries):
            bad = noisy()
            if not bad:
                break
            again += len(bad)
            self.progress.add(len(bad) * self.rounds)
            for i, fresh in zip(bad, self.time([jobs[i] for i in bad])):
                if spread(fresh) < spread(samples[i]):
                    samples[i] = fresh
        return [statistics.median(s) for s in samples], [spread(s) for s in samples], again, noisy()
