#!/usr/bin/env bash
# The torch range pyfast_gan declares, tested rather than claimed: a throwaway venv with
# Python 3.12 and torch VERSION (and the triton that torch pins), a copy of this working tree
# built there (C++ kernels; CUDA off: nvcc 13 need not match that torch's CUDA), and the fast
# test suite run on the CPU. Nothing here touches .venv or this checkout's build.
#
#   bash scripts/compat.sh 2.11.0        # the lent GPU machines' torch (with triton 3.6.0)
#   bash scripts/compat.sh 2.15.0
#
# Env: COMPAT_DIR (default /tmp/pyfast_gan_compat_VERSION; removed and remade each run),
# PYTHON312 (default: python3.12 on PATH, else pyenv's 3.12), PYTEST_ARGS (extra pytest args).
# Downloads torch and its dependencies from the registry (GBs for a CUDA build of torch): a
# compat run is a script for a developer, not part of CI (CI keeps the pinned torch 2.14.1).
set -euo pipefail
VERSION=${1:?usage: bash scripts/compat.sh TORCH_VERSION}
cd "$(dirname "$0")/.."
SRC=$PWD
DIR=${COMPAT_DIR:-/tmp/pyfast_gan_compat_$VERSION}
PY=${PYTHON312:-}
if [ -z "$PY" ]; then  # the first python3.12 that runs (a pyenv shim may exist and fail)
  for c in python3.12 ~/.pyenv/versions/3.12*/bin/python3.12; do
    if "$c" --version > /dev/null 2>&1; then PY=$c; break; fi
  done
fi
[ -n "$PY" ] || { echo "compat.sh: no Python 3.12 found (set PYTHON312)" >&2; exit 2; }
rm -rf "$DIR"
mkdir -p "$DIR"
echo "== venv ($("$PY" --version)) in $DIR"
"$PY" -m venv "$DIR/venv"
V="$DIR/venv/bin/python"
# This machine's pip config caps torch at the release on its disk; a compat run lifts it.
export PIP_CONSTRAINT=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1
"$V" -m pip install -q --upgrade pip setuptools wheel
"$V" -m pip install -q "torch==$VERSION"
# Without lmdb, torchvision and pytorch-fid, as on the lent GPU machines: the tests that need
# them must skip there, and this run shows that they do.
"$V" -m pip install -q numpy pillow tqdm scikit-learn mlxtend matplotlib scipy tensorboard pytest pytest-benchmark ninja
echo "== copy of the working tree"
mkdir -p "$DIR/src"
git ls-files -z --cached --others --exclude-standard | (cd "$SRC" && xargs -0 cp --parents -t "$DIR/src")
cd "$DIR/src"
echo "== build (C++ kernels)"
PYFAST_GAN_SKIP_CUDA=1 MAX_JOBS=${MAX_JOBS:-2} "$V" setup.py -q build_ext --inplace > "$DIR/build.log" 2>&1 \
  || { tail -40 "$DIR/build.log"; exit 1; }
"$V" - <<'PY'
import platform, torch, triton
from pyfast_gan import _native
print("python", platform.python_version(), "torch", torch.__version__, "triton", triton.__version__)
for fam in _native.FAMILIES:
    print(fam, "loaded" if _native.load(fam) else "MISSING: " + _native.error(fam))
PY
echo "== fast suite"
# shellcheck disable=SC2086
"$V" -m pytest -q -p no:cacheprovider ${PYTEST_ARGS:-}
