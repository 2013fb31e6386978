#!/usr/bin/env bash
# make wheel-check: capxai as a user installs it, checked against what the checkout holds (issue 37).
#   1. python -m build: the sdist, then the wheel built from that sdist, each in build isolation; the sdist's file list
#      is checked against git's (csrc/, tests/cpp/, the package and its resources, setup.py, CMakeLists.txt, README).
#   2. A fresh venv gets torch (the dev venv's release, from the package registry, as a user's pip gets it), then the
#      wheel with its declared dependencies only (no extras): every layer and `capxai --help` import there, then the op
#      tests run against the installed package (pytest started outside the checkout: capxai from the venv's
#      site-packages, printed).
#   3. pip builds the sdist itself, isolated, and installs it over the wheel; the extension test runs on that build.
# The extension loads only under the torch it was compiled against (capxai/_extension.py), so every isolated build
# environment gets the same torch through a constraints file: PIP_CONSTRAINT for python -m build's environments,
# PIP_BUILD_CONSTRAINT for pip's own (pip >= 26.2 applies only build constraints there). Without one, an isolated build
# compiles against pip's newest torch and the installed package refuses to import.
# CPU kernels only (CAPXAI_NO_CUDA=1): this checks packaging; make cuda-check builds the CUDA variant.
# Usage: tools/wheel_check.sh DEV_PYTHON: the dev venv's Python (torch, build); the fresh venv is made by $PYTHON
# (python3). Everything goes into build/wheel-check/, emptied first.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DEV_PY=${1:?usage: tools/wheel_check.sh DEV_PYTHON}
OUT=$ROOT/build/wheel-check
VENV=$OUT/venv
OP_TESTS=(tests/test_extension.py tests/test_lrp_linear.py tests/test_lrp_lstm.py tests/test_lrp_attention.py
          tests/test_fuzz.py)

started=$SECONDS
current=
times=()
step() {  # step NAME: ends the timing of the step before, announces NAME ("end": none)
  [ -z "$current" ] || times+=("$(printf '%-48s %4d s' "$current" $((SECONDS - step_started)))")
  current=$1
  step_started=$SECONDS
  [ "$1" = end ] || echo "--- wheel-check: $1"
}
quiet_pip() {  # pip, without the machine's notes about index folders it cannot read
  "$@" 2> >(grep -v "^WARNING: Location 'file:" >&2)
}

TORCH=$("$DEV_PY" -c 'import torch; print(torch.__version__.split("+")[0])')
rm -rf "$OUT"
mkdir -p "$OUT/dist" "$OUT/run"
echo "torch==$TORCH" > "$OUT/constraints.txt"
export PIP_CONSTRAINT=$OUT/constraints.txt PIP_BUILD_CONSTRAINT=$OUT/constraints.txt CAPXAI_NO_CUDA=1
export MAX_JOBS=${MAX_JOBS:-2} PIP_DISABLE_PIP_VERSION_CHECK=1
unset CAPXAI_EXTENSION

step "python -m build (sdist, then the wheel from it)"
quiet_pip "$DEV_PY" -m build --outdir "$OUT/dist" . > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
grep -E "^\s+- torch==" "$OUT/build.log" | sort -u | sed 's/^ */    build environment: /'
SDIST=$(ls "$OUT"/dist/capxai-*.tar.gz)
WHEEL=$(ls "$OUT"/dist/capxai-*.whl)
echo "    $(basename "$SDIST") ($(du -k "$SDIST" | cut -f1) KiB)"
echo "    $(basename "$WHEEL") ($(du -k "$WHEEL" | cut -f1) KiB)"

step "the sdist's files against git's"
top=$(basename "$SDIST" .tar.gz)
tracked() {  # the files git tracks that the sdist must carry (those deleted in the work tree aside)
  git ls-files csrc tests/cpp capxai setup.py pyproject.toml CMakeLists.txt README.md MANIFEST.in |
    while read -r file; do [ ! -e "$file" ] || echo "$file"; done | sort
}
missing=$(comm -23 <(tracked) <(tar tzf "$SDIST" | sed "s|^$top/||" | sort))
[ -z "$missing" ] || { echo "the sdist lacks:"; echo "$missing"; exit 1; }
if tar tzf "$SDIST" | grep -E '\.(so|o|pyc)$'; then echo "the sdist carries build products (above)"; exit 1; fi
echo "    $(tar tzf "$SDIST" | grep -c -E '\.(cpp|h|cu|cuh)$') C++/CUDA files," \
     "$(tar tzf "$SDIST" | grep -c '\.py$') Python files"
"$DEV_PY" - "$WHEEL" <<'EOF'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
wanted = ["capxai/_C.", "capxai/evaluate/resources/frequent_words.json", "capxai/train/resources/stop_words.txt"]
lacking = [w for w in wanted if not any(name.startswith(w) for name in names)]
stray = [name for name in names if name.startswith(("csrc/", "tests/"))]
sys.exit(f"the wheel lacks {lacking}" if lacking else f"the wheel carries {stray[:5]}" if stray else None)
EOF

step "fresh venv + torch==$TORCH"
"${PYTHON:-python3}" -m venv "$VENV"
# the dev venv's pip (a venv starts with the pip bundled with Python, 23.2 here, which treats constraints otherwise)
quiet_pip "$VENV/bin/python" -m pip install --quiet "pip==$("$DEV_PY" -m pip --version | cut -d' ' -f2)"
quiet_pip "$VENV/bin/python" -m pip install --quiet "torch==$TORCH"

step "install the wheel (dependencies, no extras)"
quiet_pip "$VENV/bin/python" -m pip install --quiet -c requirements.txt "$WHEEL"
cd "$OUT/run"  # outside the checkout: nothing of the source tree is importable from here
check_import() {  # capxai resolves to the venv, its extension loads, every layer and the CLI import without extras
  PYTHONSAFEPATH=1 "$VENV/bin/python" - "$VENV" <<'EOF'
import sys
from pathlib import Path
import capxai, capxai.models, capxai.explain, capxai.train, capxai.evaluate, capxai.data, capxai.cli, capxai._C
print(f"    capxai {capxai.__version__} from {capxai.__file__}, extension {Path(capxai._C.__file__).name}, "
      f"{len(capxai.ops.op_names())} ops")
if not Path(capxai.__file__).resolve().is_relative_to(Path(sys.argv[1]).resolve()):
    sys.exit("capxai was not imported from the fresh venv")
EOF
  "$VENV/bin/capxai" --help > /dev/null
}
check_import

step "op tests against the installed wheel"
quiet_pip "$VENV/bin/python" -m pip install --quiet -c "$ROOT/requirements.txt" pytest expecttest
PYTHONSAFEPATH=1 "$VENV/bin/python" -m pytest -q -p no:cacheprovider -m "not slow" "${OP_TESTS[@]/#/$ROOT/}"

step "pip install the sdist (isolated build)"
quiet_pip "$VENV/bin/python" -m pip install --quiet --force-reinstall --no-deps "$SDIST"
check_import
PYTHONSAFEPATH=1 "$VENV/bin/python" -m pytest -q -p no:cacheprovider "$ROOT/tests/test_extension.py"

step end
echo "=== wheel-check: step times ==="
printf '%s\n' "${times[@]}"
echo "wheel-check: total $((SECONDS - started)) s"
