#!/usr/bin/env bash
# `make gpu-check`: build the CUDA variant for the visible GPU, run the CUDA tests, compute-sanitizer (memcheck,
# racecheck) on tools/gpu_sanitize.py, the GPU benchmarks, and write one report: runs/gpu-check/report.md.
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
rm -f "$OUT_DIR"/{steps.txt,tests.xml,bench.json,report.md} "$OUT_DIR"/*.log  # no result of an earlier run

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
cuda_benchmarks=$(grep -l "cuda" benchmarks/test_*.py)
if [ -z "$cuda_tests" ] || [ -z "$cuda_benchmarks" ]; then
  echo "make gpu-check: found no CUDA tests or benchmarks under tests/ and benchmarks/" >&2; exit 1
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}  # the sanitizer's script imports capxai from this checkout
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
"$PY" tools/gpu_report.py "$OUT_DIR" > "$OUT_DIR/report.md.tmp" && mv "$OUT_DIR/report.md.tmp" "$OUT_DIR/report.md" \
  || status=1
echo "report: $OUT_DIR/report.md"
exit $status
