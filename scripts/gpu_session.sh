#!/usr/bin/env bash
# Everything a lent GPU machine is for, in one call (see README "Benchmarks"):
# build the native kernels for the local GPU, run the whole test suite (CUDA tests
# included), run every benchmark on the GPU with --save, and copy the results and logs
# to $OUT (the device tool's return folder) when it is set.
#   bash scripts/gpu_session.sh            # uses the machine's python/torch as installed
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUTDIR=$(mktemp -d)   # logs; packed into $OUT at the end (the device tool returns <= 8 files)
export PYTHONUNBUFFERED=1
arch=$($PY -c "import torch; p=torch.cuda.get_device_capability(); print(f'{p[0]}.{p[1]}')")
echo "== build for sm_${arch}"
TORCH_CUDA_ARCH_LIST="$arch" PYFAST_GAN_FORCE_CUDA=1 MAX_JOBS=${MAX_JOBS:-16} \
  $PY setup.py build_ext --inplace > "$OUTDIR/build.log" 2>&1 || { tail -50 "$OUTDIR/build.log"; exit 1; }
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
$PY - <<'PY'
import torch, pyfast_gan
from pyfast_gan import _native
print(torch.cuda.get_device_name(), "torch", torch.__version__, "cuda", torch.version.cuda)
for fam in _native.FAMILIES:
    print(fam, _native.load(fam), _native.has_cuda_kernels(fam), _native.error(fam))
PY
echo "== tests"
$PY -m pytest -q -p no:cacheprovider -x 2>&1 | tee "$OUTDIR/tests.log" | tail -30
rc_tests=${PIPESTATUS[0]}
echo "== benchmarks"
for b in gradient_norm_penalty interpolate gradient_penalty clip_weights rmsprop_clip; do
  $PY benchmarks/bench_$b.py --device cuda --save 2>&1 | tee -a "$OUTDIR/bench.log"
done
$PY benchmarks/bench_train.py --device cuda --losses wgan-gp wgan dcgan --save 2>&1 | tee -a "$OUTDIR/bench.log"
cp benchmarks/results/*.json "$OUTDIR"/ 2>/dev/null || true
if [ -n "${OUT:-}" ]; then
  tar czf "$OUT/gpu_session.tgz" -C "$OUTDIR" .
else
  echo "logs and results in $OUTDIR (JSON also in benchmarks/results/)"
fi
exit $rc_tests
