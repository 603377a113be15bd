#!/usr/bin/env bash
# Build a SEPARATE virtual environment with Microsoft NNI 3.0 for the peer comparison.
# NNI is never a dependency of lightning_nas: this venv lives outside the repo.
#   NNI_VENV=/path bash benchmarks/peers/setup_nni.sh     (default /work/nni-venv)
# torch/torchvision are pinned to the versions the main venv uses (served from the local pip cache,
# so no multi-GB download).
set -euo pipefail
NNI_VENV="${NNI_VENV:-/work/nni-venv}"
PY="${PYTHON:-python3}"
TORCH_PIN="${TORCH_PIN:-torch==2.14.1}"
TV_PIN="${TV_PIN:-torchvision==0.29.1}"
PL_PIN="${PL_PIN:-pytorch-lightning==2.0.9}"

if [ ! -x "$NNI_VENV/bin/python" ]; then
  "$PY" -m venv "$NNI_VENV"
fi
PIP="$NNI_VENV/bin/pip"
"$PIP" install -q --upgrade pip wheel
# 1. torch from the local cache (same build as the main venv).
"$PIP" install -q "$TORCH_PIN" "$TV_PIN"
# 2. Lightning + metrics (NNI 3.0's oneshot strategies import pytorch_lightning).
"$PIP" install -q "$PL_PIN" torchmetrics
# 3. NNI itself; --no-deps first keeps pip from replacing torch, then its runtime deps by hand.
"$PIP" install -q --no-deps "nni==3.0"
# (the pins are nni 3.0's own: typeguard<4.1.3, filelock<3.12)
"$PIP" install -q astor cloudpickle colorama "filelock<3.12" json_tricks numpy nvidia-ml-py packaging pandas prettytable \
  psutil PythonWebHDFS PyYAML requests responses schema scikit-learn scipy tqdm "typeguard>=3.0.0,<4.1.3" typing_extensions websockets
# Last: pytorch-lightning 2.0.x (lightning_fabric) imports pkg_resources, which setuptools 81+ dropped;
# torch 2.14 asks for setuptools>=77.
"$PIP" install -q --no-deps "setuptools>=77,<81"
"$NNI_VENV/bin/python" - <<'PY'
import torch, pytorch_lightning, nni
print("torch", torch.__version__, "| pytorch_lightning", pytorch_lightning.__version__, "| nni", nni.__version__)
import nni.nas.hub.pytorch, nni.nas.oneshot.pytorch  # noqa: F401
print("nni.nas imports OK")
PY
