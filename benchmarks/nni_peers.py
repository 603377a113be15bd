"""Side by side with Microsoft NNI 3.0: training-step time and memory, and three claims checked by scripts.

NNI lives in its own virtual environment, never our dependency: ``bash benchmarks/peers/setup_nni.sh``
(default ``/work/nni-venv``; ``NNI_VENV`` moves it). Without it this benchmark reports that and measures
nothing. ``benchmarks/peers/compare.py`` runs ``ours_step.py`` and ``nni_step.py`` alternately in rounds on
the same ShuffleNet SPOS space with channel search and the ProxylessNAS space (NNI's widths; CIFAR strides
in the full mode, NNI's 224-px strides in the quick one), batch 64, 32 px, one thread: a fixed smallest
arch, a fixed largest arch and random paths; the ratio ours/NNI is taken per round. The claim scripts print
whether each claim about NNI holds, with evidence; a claim that does not hold is reported as such.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from benchmarks.common import Bench

ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT / "benchmarks" / "peers"
CLAIMS = {"ddp_paths": "nni_ddp_paths.py", "export": "nni_export.py", "latency_grad": "nni_latency_grad.py"}


def _last_json(cmd: list[str]) -> dict:
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[-3:])} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    bench = Bench("nni_peers", "lightning_nas vs NNI 3.0 on the same spaces: step time and memory (ours/NNI), "
                  "and what NNI cannot do, each checked by a script.")
    args = bench.parse(argv)
    nni_python = Path(os.environ.get("NNI_VENV", "/work/nni-venv")) / "bin" / "python"
    geometry, rounds, reps = ("imagenet", 2, 1) if args.quick else ("cifar", 3, 3)
    bench.settings.update({"nni_python": str(nni_python), "geometry": geometry, "rounds": rounds, "reps": reps,
                           "batch": 64, "input_size": 32})
    if not nni_python.exists():
        bench.note(f"NNI's environment {nni_python} is missing: run `bash benchmarks/peers/setup_nni.sh` first.")
        bench.emit()
        return
    doc = _last_json([sys.executable, str(PEERS / "compare.py"), "--rounds", str(rounds), "--reps", str(reps),
                      "--warmup", "1", "--geometry", geometry, "--nni-python", str(nni_python)])
    for case, res in doc["cases"].items():
        ratio = res["time_ratio_ours_over_nni"]
        bench.figure(f"{case}.time_ratio", ratio["median"])
        bench.figure(f"{case}.time_ratio_min_max", [ratio["min"], ratio["max"]])
        bench.figure(f"{case}.memory_ratio", res.get("memory_ratio_ours_over_nni"))
        if not case.endswith("random"):
            bench.target(f"{case}.time_ratio", "<=", 0.5)
    scripts = [] if args.quick else list(CLAIMS)  # the claims need NNI's DDP and export: full mode
    for name in scripts:
        claim = _last_json([str(nni_python), str(PEERS / CLAIMS[name])])
        bench.figure(f"claim.{name}.holds", claim.get("claim_true"))
        bench.note(f"claim {name}: {claim.get('claim')} — {'holds' if claim.get('claim_true') else 'does NOT hold'}"
                   f"; evidence: {json.dumps(claim.get('evidence', claim))[:600]}")
    bench.note("Random paths differ between the two sides (NNI's sampling cannot be seeded), so those ratios are "
               "noisy; fixed archs have identical MACs and saved activations on both sides.")
    bench.emit()


if __name__ == "__main__":
    main()
