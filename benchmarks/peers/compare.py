"""Driver: ours vs NNI 3.0 supernet step time and memory, interleaved rounds (A, B, B, A, ...).

Run from our venv, after ``bash benchmarks/peers/setup_nni.sh``:

    .venv/bin/python benchmarks/peers/compare.py [--rounds 3] [--reps 3] [--warmup 1] [--geometry cifar]
        [--nni-python /work/nni-venv/bin/python]   (or NNI_PYTHON=...)

Each round runs ``ours_step.py`` (our venv) and ``nni_step.py`` (NNI's venv) as subprocesses, the order
alternating between rounds, and takes per case the ratio ours/NNI of their median step times *within the
round*; the ratios are summarised as median and min-max over rounds. Memory (saved activations) and MACs
are deterministic for the fixed archs and reported once. Prints one JSON object (last line).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.common import spread  # noqa: E402


def run(python: str, script: str, extra: list[str]) -> dict:
    proc = subprocess.run([python, str(HERE / script), *extra], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{script} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--geometry", choices=("cifar", "imagenet"), default="cifar")
    parser.add_argument("--spaces", default="shufflenet,proxyless")
    parser.add_argument("--nni-python", default=os.environ.get("NNI_PYTHON", "/work/nni-venv/bin/python"))
    args = parser.parse_args()
    extra = ["--reps", str(args.reps), "--warmup", str(args.warmup), "--geometry", args.geometry,
             "--spaces", args.spaces]
    runners = {"ours": (sys.executable, "ours_step.py"), "nni": (args.nni_python, "nni_step.py")}
    results: dict[str, list[dict]] = {"ours": [], "nni": []}
    for r in range(args.rounds):
        order = ["ours", "nni"] if r % 2 == 0 else ["nni", "ours"]
        for who in order:
            python, script = runners[who]
            results[who].append(run(python, script, extra + ["--seed", str(r)]))
            print(f"round {r} {who} done", file=sys.stderr, flush=True)
    cases = list(results["ours"][0]["cases"])
    summary: dict = {}
    for case in cases:
        ours_ms = [res["cases"][case]["step_ms"] for res in results["ours"]]
        nni_ms = [res["cases"][case]["step_ms"] for res in results["nni"]]
        ratios = [a / b for a, b in zip(ours_ms, nni_ms)]
        o0, n0 = results["ours"][0]["cases"][case], results["nni"][0]["cases"][case]
        summary[case] = {
            "time_ratio_ours_over_nni": spread(ratios),
            "ours_step_ms": spread(ours_ms), "nni_step_ms": spread(nni_ms),
            "ours_saved_MiB": round(o0["saved_bytes"] / 2**20, 1), "nni_saved_MiB": round(n0["saved_bytes"] / 2**20, 1),
            "memory_ratio_ours_over_nni": round(o0["saved_bytes"] / n0["saved_bytes"], 3),
        }
        if "macs" in o0:
            summary[case]["macs_ours"], summary[case]["macs_nni"] = o0["macs"], n0["macs"]
    out = {"benchmark": "peers/compare (lightning_nas vs NNI 3.0)", "goal": "time ratio <= 0.5",
           "settings": {"rounds": args.rounds, "reps": args.reps, "warmup": args.warmup, "geometry": args.geometry,
                        "batch": 64, "size": 32, "threads": 1, "nni": results["nni"][0].get("nni"),
                        "torch": results["ours"][0]["torch"]},
           "cases": summary}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
