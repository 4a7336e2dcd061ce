#!/usr/bin/env bash
# Create .venv, install torch and the dependencies, and build pyfast_gan's native
# kernels (C++ always; CUDA when nvcc and a CUDA build of torch are present).
# Idempotent: re-running only rebuilds what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_SPEC=${PYFAST_GAN_TORCH:-torch==2.14.1}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
python -m pip install -q --upgrade pip setuptools wheel
python -m pip install -q "$TORCH_SPEC"
python -m pip install -q numpy pillow tqdm scikit-learn mlxtend matplotlib scipy tensorboard lmdb pytest pytest-benchmark ninja
# FID/KID: torchvision's Inception-v3 with pytorch-fid's FID blocks. torchvision 0.29.1 is the
# build that matches torch 2.14.1 (another version would pull a different torch).
TORCHVISION_SPEC=${PYFAST_GAN_TORCHVISION:-torchvision==0.29.1}
python -m pip install -q "$TORCHVISION_SPEC" "pytorch-fid>=0.3"
# The native build needs the torch installed above, not an isolated copy.
MAX_JOBS=${MAX_JOBS:-2} python -m pip install -q --no-build-isolation --no-deps -e .
python - <<'PY'
import torch, pyfast_gan
from pyfast_gan import _native
for fam in _native.FAMILIES:
    ok = _native.load(fam)
    print(f"pyfast_gan native {fam}: {'loaded' if ok else 'MISSING: ' + _native.error(fam)}"
          + (f" (CUDA kernels: {_native.has_cuda_kernels(fam)})" if ok else ""))
print("torch", torch.__version__, "cuda build", torch.version.cuda, "cuda available", torch.cuda.is_available())
PY
