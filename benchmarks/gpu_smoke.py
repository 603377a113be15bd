"""``python -m benchmarks.gpu_smoke``: every recipe for two steps on one GPU (bf16-mixed), on fake data.

Each recipe runs as ``lightning-nas fit --config <recipe> --trainer.fast_dev_run=2 --trainer.accelerator=gpu
--trainer.precision=bf16-mixed --trainer.devices=1`` in its own subprocess and folder (four at a time), with the
per-recipe overrides of the CPU recipe test (:mod:`tests.helpers.recipe_smoke`: fake CIFAR/ImageNet roots, an
arch or prior where a recipe reads one from an earlier step) and a CSV logger instead of W&B. It prints one
line per recipe (``ok`` or the error's last line, seconds) and a summary, and exits 1 if any recipe failed.
On one H100 it should take well under 6 minutes. This is a check, not a benchmark: ``python -m benchmarks``
does not run it.

    python -m benchmarks.gpu_smoke                       # every recipe, GPU, bf16-mixed
    python -m benchmarks.gpu_smoke --device cpu --only quickstart retrain   # CPU, fp32 (what the test runs)

On a GPU machine without jsonargparse (or without network), carry its wheels along with the repository:
on a machine with the same Python (3.12 here; the wheels are pure Python) run
``pip download "jsonargparse[signatures]" -d wheels/``, bring ``wheels/`` with the working tree (with the
device runner: ``carry: ["wheels"]``, or leave ``wheels/`` untracked but not ignored), then on the GPU machine::

    pip install --no-index --find-links wheels "jsonargparse[signatures]"
    python -m benchmarks.gpu_smoke

W&B is not needed (the recipes' W&B logger is replaced); ``lightning_nas`` need not be installed either: the
subprocesses import it from this checkout.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from tests.helpers.recipe_smoke import ROOT, recipes, smoke_args, write_fake_roots

__all__ = ["main", "run_recipe"]


def run_recipe(recipe: str, roots: dict[str, Path], work: Path, accelerator: str, precision: str,
               timeout: float, threads: int) -> tuple[str, bool, str, float]:
    """Fit ``recipe`` for two steps in a subprocess in its own folder under ``work``.

    Returns:
        ``(recipe, ok, "ok" or the error's last line, seconds)``.
    """
    folder = work / recipe.removesuffix(".yaml").replace("/", "__")
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        args = smoke_args(recipe, roots, folder, cpu_tables=accelerator == "cpu")
    except Exception as err:  # a recipe whose overrides cannot be prepared is a failed recipe, not a crash
        return recipe, False, f"{type(err).__name__}: {err}", time.perf_counter() - start
    logger = json.dumps({"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "logs"}})
    cmd = [sys.executable, "-m", "lightning_nas.cli", "fit", *args, "--trainer.fast_dev_run=2",
           f"--trainer.accelerator={accelerator}", f"--trainer.precision={precision}", "--trainer.devices=1",
           "--trainer.strategy=auto", f"--trainer.logger={logger}", f"--trainer.default_root_dir={folder}"]
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path,
           "WANDB_MODE": "disabled", "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    try:
        done = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return recipe, False, f"timed out after {timeout:.0f} s", time.perf_counter() - start
    seconds = time.perf_counter() - start
    (folder / "output.log").write_text(done.stdout + done.stderr)
    if done.returncode == 0:
        return recipe, True, "ok", seconds
    lines = [line.strip() for line in (done.stderr or done.stdout).splitlines() if line.strip()]
    return recipe, False, (lines[-1] if lines else f"exit code {done.returncode}")[:200], seconds


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_smoke", description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("gpu", "cpu"), default="gpu",
                        help="gpu: accelerator gpu, bf16-mixed; cpu: accelerator cpu, fp32 (to test this script)")
    parser.add_argument("--precision", default=None, help="override the device's precision (bf16-mixed / 32)")
    parser.add_argument("--jobs", type=int, default=4, help="recipes run at the same time")
    parser.add_argument("--only", nargs="*", default=None, help="run the recipes whose path contains one of these")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per recipe")
    parser.add_argument("--workdir", default=None, help="keep the runs here (default: a temporary folder)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the smoke fits and print the table; return the exit code (1 if any recipe failed)."""
    args = _parse(argv)
    chosen = [r for r in recipes() if not args.only or any(s in r for s in args.only)]
    if not chosen:
        print(f"no recipe matches {args.only}", file=sys.stderr)
        return 2
    precision = args.precision or ("bf16-mixed" if args.device == "gpu" else "32")
    jobs = max(1, min(args.jobs, len(chosen)))
    threads = max(1, (os.cpu_count() or 1) // jobs)
    with tempfile.TemporaryDirectory(prefix="gpu_smoke_") as tmp:
        work = Path(args.workdir or tmp).resolve()
        roots = write_fake_roots(work / "data")
        print(f"{len(chosen)} recipes, accelerator={args.device}, precision={precision}, {jobs} at a time, in {work}")
        start, results = time.perf_counter(), []
        with ThreadPoolExecutor(jobs) as pool:
            futures = [pool.submit(run_recipe, r, roots, work, args.device, precision, args.timeout, threads)
                       for r in chosen]
            for future in as_completed(futures):
                recipe, ok, note, seconds = future.result()
                results.append((recipe, ok))
                line = f"{'ok  ' if ok else 'FAIL'} {seconds:6.1f} s  {recipe}"
                print(line if ok else f"{line}  {note}", flush=True)
        failed = [r for r, ok in results if not ok]
        print(f"{len(results) - len(failed)}/{len(results)} recipes ok in {time.perf_counter() - start:.0f} s"
              + (f"; failed: {', '.join(sorted(failed))}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
