#!/usr/bin/env bash
# `make gpu-check`: build the CUDA variant for the visible GPU, run the CUDA tests, compute-sanitizer (memcheck,
# racecheck) on tools/gpu_sanitize.py, the GPU benchmarks, then end to end: the quick demo on the GPU, the scale
# benchmark at GPU sizes (benchmarks/test_scale.py) and LRP of a whole 5,000-image test split at 224 px
# (tools/gpu_scale.py), and write one report: runs/gpu-check/report.md.
# Needs only what a GPU machine with torch and nvcc has (no network, no .venv): python is .venv's when there is one,
# else $PYTHON or python3. Every step runs even when an earlier one fails; the exit status says whether any failed.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=${PYTHON:-python3}; fi
fi
OUT_DIR=${GPU_CHECK_OUT:-runs/gpu-check}
BUILD=build/gpu
mkdir -p "$OUT_DIR"

if ! "$PY" -c "import torch" 2>/dev/null; then
  echo "make gpu-check: $PY cannot import torch; run it with a python that has torch (PY=... make gpu-check)" >&2
  exit 2
fi
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "make gpu-check: no CUDA GPU is visible to $PY (torch.cuda.is_available() is False); this check runs on a" \
       "machine with an NVIDIA GPU, a CUDA build of torch and nvcc. Nothing was built or run." >&2
  exit 2
fi

status=0
step() {  # step NAME COMMAND...: run, log to $OUT_DIR/NAME.log, record pass/fail for the report
  local name=$1; shift
  local started=$SECONDS
  echo "=== $name ==="
  "$@" > "$OUT_DIR/$name.log" 2>&1
  local code=$?
  echo "$name $code $((SECONDS - started))" >> "$OUT_DIR/steps.txt"
  tail -n 3 "$OUT_DIR/$name.log"
  [ $code -eq 0 ] || { echo "=== $name FAILED (exit $code; log $OUT_DIR/$name.log) ==="; status=1; }
  return $code
}
# no result of an earlier run
rm -f "$OUT_DIR"/{steps.txt,tests.xml,bench.json,scale.json,explain5k.json,report.md} "$OUT_DIR"/*.log \
  "$OUT_DIR/demo-quick/demo.json"

arch=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
suffix=$("$PY" -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")
export CAPXAI_EXTENSION=$PWD/$BUILD/lib/capxai/_C$suffix
# The build reuses $BUILD/temp (ninja) when nothing changed.
step build env FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-$arch}" MAX_JOBS="$(nproc)" \
  "$PY" setup.py --quiet build_ext --build-lib "$BUILD/lib" --build-temp "$BUILD/temp" || {
  "$PY" tools/gpu_report.py "$OUT_DIR" > "$OUT_DIR/report.md"; exit 1; }
step info "$PY" -m capxai.info --require-cuda
# Only the modules that hold CUDA tests are collected: the others import packages (zennit, captum, pycocotools) that
# a bare GPU machine may lack, and hold no CUDA test.
cuda_tests=$(grep -lE "mark\.cuda|def test\w*\([^)]*\bdevice\b" tests/test_*.py)
# test_scale.py runs in its own step, at its GPU sizes
cuda_benchmarks=$(grep -l "cuda" benchmarks/test_*.py | grep -v "/test_scale\.py$")
if [ -z "$cuda_tests" ] || [ -z "$cuda_benchmarks" ]; then
  echo "make gpu-check: found no CUDA tests or benchmarks under tests/ and benchmarks/" >&2; exit 1
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}  # the sanitizer's script imports capxai from this checkout
# Wheels carried with the tree (`make gpu-wheels` on a machine with network: zennit, captum, pycocotools for this
# machine's Python) are installed beside it, for the explainers' tests and the end-to-end part.
if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$BUILD/site" .whl/*.whl \
    && export PYTHONPATH=$PWD/$BUILD/site:$PYTHONPATH
fi
step tests "$PY" -m pytest -q -m cuda $cuda_tests -p no:cacheprovider --junitxml="$OUT_DIR/tests.xml"
sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)
if [ -n "$sanitizer" ]; then
  step memcheck "$sanitizer" --tool memcheck --error-exitcode 99 "$PY" tools/gpu_sanitize.py
  step racecheck "$sanitizer" --tool racecheck --error-exitcode 99 "$PY" tools/gpu_sanitize.py
else
  echo "memcheck 127 0" >> "$OUT_DIR/steps.txt"; echo "racecheck 127 0" >> "$OUT_DIR/steps.txt"
  echo "=== compute-sanitizer not found: memcheck and racecheck did not run ==="; status=1
fi
step bench "$PY" -m pytest -q $cuda_benchmarks -k cuda -p no:cacheprovider --benchmark-only \
  --benchmark-json="$OUT_DIR/bench.json"
# End to end. The scale benchmark and the 5,000-image explanation need zennit and captum; the demo also
# pycocotools, pycocoevalcap and Java (its captions are scored: PTB tokenizer, METEOR).
missing=$("$PY" -c "
import importlib.util as u, shutil
need = ['zennit', 'captum', 'pycocotools', 'pycocoevalcap']
print(' '.join([n for n in need if u.find_spec(n) is None] + ([] if shutil.which('java') else ['java'])))")
if [ -n "$missing" ]; then
  echo "demo 3 0" >> "$OUT_DIR/steps.txt"; status=1
  echo "the quick demo needs $missing on this machine (make gpu-wheels carries zennit, captum, pycocotools;" \
    "pycocoevalcap and a Java runtime must be installed or carried)" > "$OUT_DIR/demo.log"
  echo "=== demo did not run: missing $missing ==="
else
  step demo "$PY" -m capxai.demo --quick --device cuda --out "$OUT_DIR/demo-quick" --overwrite
fi
step scale env CAPXAI_SCALE=gpu "$PY" -m pytest -q benchmarks/test_scale.py -p no:cacheprovider --benchmark-only \
  --benchmark-json="$OUT_DIR/scale.json"
# the 5,000 test scenes stay in $OUT_DIR/explain5k/scenes for the next run; each shard's tensors are deleted when done
step explain5k "$PY" tools/gpu_scale.py --out "$OUT_DIR/explain5k" --result "$OUT_DIR/explain5k.json" --device cuda
"$PY" tools/gpu_report.py "$OUT_DIR" > "$OUT_DIR/report.md.tmp" && mv "$OUT_DIR/report.md.tmp" "$OUT_DIR/report.md" \
  || status=1
echo "report: $OUT_DIR/report.md"
exit $status
