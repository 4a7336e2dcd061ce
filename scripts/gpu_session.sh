#!/usr/bin/env bash
# A lent GPU machine's checks, in stages that each fit one device call (<= ~8 minutes on a
# 16-core H200 with the machine's own python/torch). Each stage writes its files straight
# into $OUT as it goes (the device tool returns at most 8 files a call), so a stage killed
# at its limit still returns what it finished.
#
#   bash scripts/gpu_session.sh a      # versions + nvidia-smi, build for this GPU's arch only,
#                                      # the cuda/triton-marked tests, then the rest of the fast suite
#   bash scripts/gpu_session.sh b      # op benchmarks (penalty ops at N=256 3x64x64 / 3x96x96,
#                                      # fp32 and bf16; clip; RMSpropClip) and bench_train for
#                                      # wgan-gp and wgan: seed loop, reference, --fast (CUDA graphs
#                                      # on), --fast --no-cuda-graphs; one round
#   bash scripts/gpu_session.sh a --dry-run   # the same stage on this CPU, tiny shapes, no build
#
# Files (stage a): a_env.txt a_build.log a_tests_device.log a_tests_rest.log
#       (stage b): b_bench.log and one JSON per benchmark (6), through PYFAST_GAN_RESULTS_DIR.
# Without $OUT the files go to ./gpu_session_out/. Exit status: the first failing step's.
# Missing packages on the lent machine (lmdb, pytorch-fid): the tests that need them skip. To
# run them, carry wheels (the device tool's README: `pip download --only-binary=:all:
# --python-version 3.12 --platform manylinux2014_x86_64 -d .whl lmdb`, carry .whl, and start
# the call with `pip install --no-index --target /tmp/site .whl/*.whl; export PYTHONPATH=/tmp/site`).
set -uo pipefail
cd "$(dirname "$0")/.."
stage=${1:-}
dry=0
[ "${2:-}" = "--dry-run" ] && dry=1
case "$stage" in a|b) ;; *) echo "usage: bash scripts/gpu_session.sh a|b [--dry-run]" >&2; exit 2;; esac
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && [ "$dry" = 1 ] && PY=.venv/bin/python
OUTDIR=${OUT:-$PWD/gpu_session_out}
mkdir -p "$OUTDIR"
export PYTHONUNBUFFERED=1 PYFAST_GAN_RESULTS_DIR="$OUTDIR"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
rc=0
step() {  # step LOGFILE CMD...: run, tee into the log as it goes, remember the first failure
  local log=$1; shift
  echo "\$ $*" | tee -a "$OUTDIR/$log"
  "$@" 2>&1 | tee -a "$OUTDIR/$log"
  local r=${PIPESTATUS[0]}
  echo "exit $r" | tee -a "$OUTDIR/$log"
  [ "$rc" = 0 ] && rc=$r
  return 0
}

if [ "$stage" = a ]; then
  {
    date -u; git rev-parse HEAD 2>/dev/null; git status --porcelain 2>/dev/null | head -20
    nvidia-smi 2>&1 || echo "nvidia-smi: not available"
    $PY - <<'PY'
import platform, torch
try:
    import triton; tv = triton.__version__
except ImportError:
    tv = "not installed"
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda, "triton", tv)
print("device", torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu (no GPU)")
PY
  } > "$OUTDIR/a_env.txt" 2>&1
  cat "$OUTDIR/a_env.txt"
  if [ "$dry" = 1 ]; then
    echo "dry run: build skipped (the CPU checkout keeps its own build)" | tee "$OUTDIR/a_build.log"
  else
    arch=$($PY -c "import torch; p=torch.cuda.get_device_capability(); print(f'{p[0]}.{p[1]}')")
    step a_build.log env TORCH_CUDA_ARCH_LIST="$arch" PYFAST_GAN_FORCE_CUDA=1 MAX_JOBS=${MAX_JOBS:-16} \
      $PY setup.py build_ext --inplace
  fi
  $PY -c "
from pyfast_gan import _native
for fam in _native.FAMILIES:
    print(fam, 'loaded' if _native.load(fam) else 'MISSING', 'cuda kernels:', _native.has_cuda_kernels(fam), _native.error(fam))
" 2>&1 | tee -a "$OUTDIR/a_build.log"
  if [ "$dry" = 1 ]; then  # the device tests run in full (Triton through the interpreter)
    step a_tests_device.log $PY -m pytest -q -p no:cacheprovider -m "(cuda or triton) and not slow" \
      tests/test_clip_weights.py tests/test_any_nonfinite.py
    step a_tests_rest.log $PY -m pytest -q -p no:cacheprovider -m "not cuda and not triton and not slow" \
      tests/test_package_shape.py
  else
    step a_tests_device.log $PY -m pytest -q -p no:cacheprovider -m "(cuda or triton) and not slow"
    step a_tests_rest.log $PY -m pytest -q -p no:cacheprovider -m "not cuda and not triton and not slow"
  fi
  exit $rc
fi

# stage b
dev=cuda; [ "$dry" = 1 ] && dev=cpu
if [ "$dry" = 1 ]; then
  pen=(--device cpu --shapes 4x3x8x8 --dtypes fp32 --rounds 1 --iters 1 --no-compile)
  clip=(--device cpu --rounds 1 --iters 1)
  train=(--device cpu --image-size 32 --base 8 --steps 1 --rounds 1 --dataset-size 64 --configs naive reference)
else
  pen=(--device cuda --shapes 256x3x64x64,256x3x96x96 --dtypes fp32,bf16 --rounds 3 --iters 8)
  clip=(--device cuda --rounds 5 --iters 10)
  train=(--device cuda --rounds 1 --configs naive reference fast fast_no_graphs)
fi
for b in gradient_norm_penalty interpolate; do
  step b_bench.log $PY benchmarks/bench_$b.py "${pen[@]}" --save
done
step b_bench.log $PY benchmarks/bench_gradient_penalty.py --device $dev \
  $([ "$dry" = 1 ] && echo "--batch 4 --size 16 --base 4 --rounds 1 --iters 1" || echo "--batch 256 --base 64") --save
for b in clip_weights rmsprop_clip; do
  step b_bench.log $PY benchmarks/bench_$b.py "${clip[@]}" --save
done
step b_bench.log $PY benchmarks/bench_train.py --losses wgan-gp wgan "${train[@]}" --save
exit $rc
