# capxai: `make demo` and `make test` set everything up on a fresh machine (venv, dependencies, extension build).
# Set-up is idempotent: with nothing changed, a second run reuses the venv and the build.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements-installed
EXT_SUFFIX := $(shell $(PYTHON) -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")
EXTENSION := capxai/_C$(EXT_SUFFIX)
CSRC := $(shell find csrc -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh')
CUDA_BUILD := build/cuda
CMAKE_BUILD := build/cmake
CUDA_SHIM := build/cuda-toolkit
export MAX_JOBS ?= 2

.PHONY: demo demo-check test test-all durability-check bench build browser cuda-check gpu-check gpu-bench gpu-prebuild \
	gpu-wheels cpp-test lint e2e-check wheel-check clean help

help:
	@echo "make demo        set up .venv, build the extension, run the main job (writes runs/demo/)"
	@echo "make test        set up, then run the test suite (pytest; slow and end-to-end tests excluded)"
	@echo "make test-all    the test suite including slow and end-to-end tests"
	@echo "make docs        the documentation site (Sphinx, warnings as errors) -> runs/docs/index.html (CI runs it)"
	@echo "make e2e-check   the end-to-end tests: an interrupted demo, gloo, torchrun (CI runs it)"
	@echo "make durability-check  the slow tests of full disks, concurrent runs and edited files (CI runs it)"
	@echo "make bench       pytest-benchmark suites; JSON under runs/bench/"
	@echo "make demo-check  the quick demo from scratch and its report in headless Chromium (what CI runs)"
	@echo "make cuda-check  build the CUDA variant in $(CUDA_BUILD)/, list its CUDA kernels, run the op tests on it,"
	@echo "                 rehearse make gpu-check and gpu-bench on it (no GPU needed)"
	@echo "make gpu-check   on a GPU machine (under 10 min): CUDA tests, compute-sanitizer, GPU op benchmarks;"
	@echo "                 report in runs/gpu-check/report.md. DRY_RUN=1 rehearses it without a GPU"
	@echo "make gpu-bench   on a GPU machine, when time is left: quick demo, scale benchmark, LRP of 5,000 images"
	@echo "make gpu-prebuild  the CUDA build for the GPU machine's torch ($(GPU_TORCH), Python $(GPU_PYTHON)), made here"
	@echo "make gpu-wheels  wheels of zennit, captum, pycocotools for a GPU machine without network (.whl/)"
	@echo "make cpp-test    build csrc/ with CMake and run the C++ tests with ctest"
	@echo "make lint        ruff over the Python code (pyproject.toml's [tool.ruff]; CI runs it)"
	@echo "make wheel-check python -m build (sdist, wheel from it, isolated), both installed in a fresh venv"
	@echo "                 (build/wheel-check/venv), the op tests against the installed package (CI runs it)"

$(STAMP): requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

# The editable install compiles capxai._C in place (CPU kernels; CUDA ones too when a GPU is visible, FORCE_CUDA=1).
$(EXTENSION): $(STAMP) setup.py pyproject.toml $(CSRC)
	$(PY) -m pip install --quiet --no-build-isolation --no-deps -e .
	touch $@

build: $(EXTENSION)

# make demo QUICK=1: the same on a small set (runs/demo-quick, under 10 minutes on 2 cores)
demo: build
	$(PY) -m capxai.demo $(if $(QUICK),--quick)

# The report's browser test drives the distribution's Chromium: installed here when absent (as root, or with sudo).
browser:
	@if ! { { command -v chromium || command -v chromium-browser; } >/dev/null && command -v chromedriver >/dev/null; }; then \
	  SUDO=; [ "$$(id -u)" = 0 ] || SUDO="sudo -n"; \
	  echo "installing Debian's chromium and chromium-driver for the report's browser test"; \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
	    chromium-driver >/dev/null || echo "warning: could not install chromium (needs root or password-less sudo);" \
	    "the report's browser test will fail until it is installed"; \
	fi

# CI: the quick demo from scratch, then its report in headless Chromium (screenshots in runs/demo-quick/screenshots)
demo-check: build browser
	rm -rf runs/demo-quick
	$(PY) -m capxai.demo --quick
	CAPXAI_REPORT_RUN=runs/demo-quick $(PY) -m pytest -q tests/test_report_browser.py

# pytest-xdist: one worker per core, one torch thread each (tests/conftest.py), the tests sharing an expensive session
# fixture in one worker (--dist loadgroup); on the 2-core VM pytest 309-347 s -> 224 s
# (docs/experiments/test-tiers/README.md). TEST_WORKERS=0 runs the suite in this process.
TEST_WORKERS ?= auto
test: build
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup -p no:benchmark -m "not slow and not e2e" --durations=15 tests

test-all: build browser
	$(PY) -m pytest -q tests

# The documentation site (docs/site: Sphinx, autodoc with napoleon, MyST pages), warnings as errors, built afresh (-E:
# autodoc does not notice a changed docstring otherwise). Its tutorials run as tests in make test
# (tests/test_tutorials.py).
.PHONY: docs
docs: $(STAMP) $(EXTENSION)
	$(PY) -m sphinx -E -W --keep-going -q -b html -d build/docs-doctrees docs/site runs/docs
	@echo "runs/docs/index.html"

# End to end across processes: the interrupted demo, evaluate over gloo and under torchrun (the browser test on the
# quick demo's report is make demo-check's)
e2e-check: build
	$(PY) -m pytest -q -m "e2e and not slow" --durations=5 tests --ignore=tests/test_report_browser.py

durability-check: build browser
	$(PY) -m pytest -q -m slow tests/test_full_disk.py tests/test_run_lock.py tests/test_changed_files.py

bench: build
	@mkdir -p runs/bench
	$(PY) -m pytest -q benchmarks --benchmark-only --benchmark-json=runs/bench/bench-$$(date +%Y%m%d-%H%M%S).json

cuda-check: $(STAMP)
	FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=$${TORCH_CUDA_ARCH_LIST:-9.0} $(PY) setup.py --quiet build_ext \
		--build-lib $(CUDA_BUILD)/lib --build-temp $(CUDA_BUILD)/temp
	CAPXAI_EXTENSION=$(CURDIR)/$(CUDA_BUILD)/lib/$(EXTENSION) $(PY) -m capxai.info --require-cuda
	@# the CUDA build's CPU kernels and Python face through the test files that hold CUDA tests (the rest of the
	@# suite does not touch the build's CUDA half), then make gpu-check's and gpu-bench's rehearsals on this build
	CAPXAI_EXTENSION=$(CURDIR)/$(CUDA_BUILD)/lib/$(EXTENSION) $(PY) -m pytest -q -m "not slow" \
		$$($(PY) -c 'import sys; sys.path.insert(0, "tools"); import gpu_check; print(*gpu_check.cuda_test_files())')
	@ls .whl/*.whl >/dev/null 2>&1 || $(MAKE) --no-print-directory gpu-wheels  # what the check would carry
	$(PY) tools/gpu_check.py check --dry-run
	$(PY) tools/gpu_check.py bench --dry-run

# The GPU machine has torch, nvcc and compute-sanitizer, no network and no .venv: there python3 runs these. Carry
# build/gpu-prebuilt (make gpu-prebuild) and .whl (make gpu-wheels) with the tree, and nothing compiles there.
GPU_CHECK_PY ?= $(if $(wildcard $(PY)),$(PY),python3)
gpu-check:
	$(GPU_CHECK_PY) tools/gpu_check.py check $(if $(DRY_RUN),--dry-run)

gpu-bench:
	$(GPU_CHECK_PY) tools/gpu_check.py bench $(if $(DRY_RUN),--dry-run)

# The GPU machines' torch and Python, and the packages of their image that capxai's CUDA tests use (the device
# tool's KINDS.md, read 2026-11): build/gpu-venv is that machine's Python environment here, for the prebuilt build
# and for a rehearsal of the check as it will run there:
#   make gpu-check DRY_RUN=1 GPU_CHECK_PY=build/gpu-venv/bin/python
# tools/gpu_check.py compares the build's stamp with what runs on the GPU machine and compiles there if they differ.
GPU_PYTHON ?= 3.12
GPU_TORCH ?= 2.11.0
GPU_TORCHVISION ?= 0.26.0
GPU_VENV := build/gpu-venv
gpu-prebuild:
	@test -x $(GPU_VENV)/bin/python || { py=$$(command -v python$(GPU_PYTHON)) || { echo "make gpu-prebuild needs" \
	  "python$(GPU_PYTHON) (the GPU machine's Python)"; exit 2; }; $$py -m venv $(GPU_VENV); }
	$(GPU_VENV)/bin/python -m pip install --quiet torch==$(GPU_TORCH) torchvision==$(GPU_TORCHVISION) numpy tqdm \
		matplotlib pillow scipy scikit-learn pytest pytest-benchmark hypothesis setuptools ninja pybind11 wheel
	$(GPU_VENV)/bin/python tools/gpu_check.py prebuild --arch $${TORCH_CUDA_ARCH_LIST:-9.0}

# Wheels of what a bare GPU machine (torch, no network) lacks for make gpu-check's explainer tests and end-to-end
# part, for its Python (GPU_PYTHON), into .whl/ (ignored by git; carry it with the tree).
gpu-wheels:
	$(PYTHON) -m pip download --quiet --no-deps --only-binary=:all: --python-version $(GPU_PYTHON) --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
		zennit==0.5.1 captum==0.9.0 pycocotools==2.0.11
	@ls -la .whl

cpp-test: $(STAMP)
	tools/cuda_toolkit_shim.sh $(PY) $(CUDA_SHIM) >/dev/null
	TORCH_CUDA_ARCH_LIST=$${TORCH_CUDA_ARCH_LIST:-9.0} cmake -S . -B $(CMAKE_BUILD) -DCMAKE_BUILD_TYPE=Release \
		-DCMAKE_PREFIX_PATH="$$($(PY) -c 'import torch; print(torch.utils.cmake_prefix_path)')" \
		-DCUDA_TOOLKIT_ROOT_DIR=$(CURDIR)/$(CUDA_SHIM) -DCUDAToolkit_ROOT=$(CURDIR)/$(CUDA_SHIM) >/dev/null
	cmake --build $(CMAKE_BUILD) -j $(MAX_JOBS)
	ctest --test-dir $(CMAKE_BUILD) --output-on-failure

lint: $(STAMP)
	$(PY) -m ruff check capxai tests benchmarks tools examples

# capxai as a user installs it (issue 37): the sdist and the wheel built from it by python -m build in build isolation,
# torch in each build environment pinned to the dev venv's (the extension loads only under the torch it was compiled
# against); a fresh venv with that torch from the package registry (35-100 s here, as a user gets it, with nothing of
# the dev venv on its path), the wheel with its core dependencies, the op tests run from outside the checkout against
# the installed package; then pip's own isolated build of the sdist installed over it. Steps and times:
# tools/wheel_check.sh. Everything under build/wheel-check/ (5.5 GB; each isolated build takes 5.5 GB more in /tmp).
wheel-check: $(STAMP)
	PYTHON=$(PYTHON) tools/wheel_check.sh $(PY)

clean:
	rm -rf build runs/bench $(EXTENSION) *.egg-info
