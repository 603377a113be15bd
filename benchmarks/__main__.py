"""Run the benchmark suite: ``python -m benchmarks [--quick] [--gpu] [--only NAME ...] [--report]``.

Each benchmark module (``benchmarks/<name>.py``; helpers are ``common``, ``report`` and ``_*``) runs as
``python -m benchmarks.<name> [--quick]`` would, in its own process (forked after the common imports, so each
starts clean without paying Lightning's import again), and prints one JSON object on its last stdout line;
it is saved to ``benchmarks/results/<name>.json``, then ``BENCHMARKS.md`` is rewritten from every JSON file
there. ``--quick`` is a smoke run: its JSON goes to ``benchmarks/results_quick/`` and its page to
``benchmarks/results_quick/BENCHMARKS.md`` (not committed), so it never replaces the full figures.

The GPU benchmarks (``benchmarks/gpu_*.py``) run only when named (``--gpu`` runs them all, ``--only gpu_speed``
one) or in the ``--quick`` smoke run, each in a fresh subprocess (CUDA cannot be used in a forked child). Their JSON
goes to ``benchmarks/results/`` only when they ran on a CUDA device; a run without one is a smoke run and goes to
``benchmarks/results_quick/``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.report import render

HERE = Path(__file__).resolve().parent
# gpu_smoke: a check, not a benchmark; quality_common: the search-quality benchmarks' shared pieces
HELPERS = {"__init__", "__main__", "common", "report", "gpu_smoke", "quality_common"}


def discover() -> list[str]:
    return sorted(p.stem for p in HERE.glob("*.py") if p.stem not in HELPERS and not p.stem.startswith("_"))


def is_gpu(name: str) -> bool:
    """A GPU benchmark: run only when named or in the smoke run, never forked, kept by the device it ran on."""
    return name.startswith("gpu_")


def chosen(names: list[str], only: list[str] | None, gpu: bool, quick: bool) -> list[str]:
    """The benchmarks a command line runs: ``--only``'s, the GPU ones with ``--gpu``, else every CPU benchmark
    (and, with ``--quick``, the GPU ones' smoke runs too)."""
    if only:
        return list(only)
    if gpu:
        return [n for n in names if is_gpu(n)]
    return [n for n in names if quick or not is_gpu(n)]


def destination(doc: dict, results: Path, quick_results: Path) -> Path:
    """Where a benchmark's JSON goes: ``results``, except a GPU benchmark that ran without CUDA (a smoke run)."""
    if is_gpu(str(doc.get("name", ""))) and doc.get("device") != "cuda":
        return quick_results
    return results


def _preload() -> None:
    """Import what every benchmark imports (about 6 s, mostly Lightning) once, before forking."""
    import lightning.pytorch  # noqa: F401

    import benchmarks.common  # noqa: F401
    import lightning_nas.callbacks  # noqa: F401
    import lightning_nas.modules  # noqa: F401


def _forked(name: str, extra: list[str]) -> tuple[int, str, str]:
    """Run ``benchmarks.<name>.main(extra)`` in a forked child (its own process: nothing it changes leaks into
    the next benchmark), with the imports already done; returns ``(exit code, stdout, stderr)``."""
    import importlib
    import tempfile

    sys.stdout.flush()
    sys.stderr.flush()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        pid = os.fork()
        if pid == 0:  # the child: stdout/stderr into the files, exit without running the parent's cleanup
            code = 1
            try:
                os.dup2(out.fileno(), 1)
                os.dup2(err.fileno(), 2)
                # write to the fds even where sys.stdout/stderr were rebound (pytest's capture, a notebook)
                sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
                sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
                sys.argv = [f"benchmarks.{name}", *extra]
                importlib.import_module(f"benchmarks.{name}").main(extra)
                code = 0
            except BaseException:  # noqa: BLE001 - report anything, the child must not return into the parent
                import traceback

                traceback.print_exc()
            finally:
                quality = sys.modules.get("benchmarks.quality_common")
                if quality is not None:  # stop its worker processes, which os._exit would leave waiting
                    quality.close_workers()
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        out.seek(0)
        err.seek(0)
        return os.waitstatus_to_exitcode(status), out.read(), err.read()


def _can_fork() -> bool:
    """Fork only where it exists and CUDA is not initialised here (a forked child could not use it)."""
    if not hasattr(os, "fork"):
        return False
    import torch

    return not torch.cuda.is_initialized()


def run_one(name: str, extra: list[str]) -> dict | None:
    start = time.perf_counter()
    if _can_fork() and not is_gpu(name):
        code, stdout, stderr = _forked(name, extra)
    else:
        proc = subprocess.run([sys.executable, "-m", f"benchmarks.{name}", *extra], cwd=HERE.parent,
                              capture_output=True, text=True)
        code, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
    lines = stdout.strip().splitlines()
    try:
        doc = json.loads(lines[-1]) if code == 0 and lines else None
    except json.JSONDecodeError:
        doc = None
    took = time.perf_counter() - start
    if doc is None:
        print(f"{name}: FAILED (exit {code}, {took:.0f} s)\n{stderr[-3000:]}", file=sys.stderr)
        return None
    print(f"{name}: done in {took:.0f} s", file=sys.stderr)
    return doc


def main(argv: list[str] | None = None) -> int:
    names = discover()
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small settings: the whole suite in < 5 min")
    parser.add_argument("--gpu", action="store_true",
                        help=f"the GPU benchmarks only: {[n for n in names if is_gpu(n)]} (on a CUDA device)")
    parser.add_argument("--only", nargs="+", choices=names, metavar="NAME", help=f"a subset of {names}")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--report", action="store_true", help="only rewrite BENCHMARKS.md from the saved JSON")
    args = parser.parse_args(argv)
    quick_results = HERE / "results_quick"
    results = quick_results if args.quick else HERE / "results"
    results.mkdir(exist_ok=True)
    page = results / "BENCHMARKS.md" if args.quick else HERE.parent / "BENCHMARKS.md"
    start = time.perf_counter()
    failed = []
    if not args.report:
        if _can_fork():
            _preload()
        extra = (["--quick"] if args.quick else []) + ["--threads", str(args.threads)]
        for name in chosen(names, args.only, args.gpu, args.quick):
            doc = run_one(name, extra)
            if doc is None:
                failed.append(name)
                continue
            folder = destination(doc, results, quick_results)
            folder.mkdir(exist_ok=True)
            (folder / f"{name}.json").write_text(json.dumps(doc, indent=1) + "\n")
            if folder != results:
                print(f"{name}: ran on {doc.get('device')} (no CUDA device): a smoke run, saved to {folder} only",
                      file=sys.stderr)
    print(f"wrote {render(results, page)} ({time.perf_counter() - start:.0f} s in all)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
