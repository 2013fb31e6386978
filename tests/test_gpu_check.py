"""``make gpu-check`` without a GPU (issue 36): the test files it collects import on a bare GPU machine, the carried
prebuilt build is used only when it matches, and the plan fits the device budget. The dry run itself
(``make gpu-check DRY_RUN=1``) runs in CI's ``make cuda-check``, after the CUDA build it reuses."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "tools" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_check)

# What a GPU machine of this project lacks even with the carried wheels (zennit, captum, pycocotools): pycocoevalcap
# and Java (the caption metrics), selenium (the browser test); its transformers is another version than ours.
ABSENT_THERE = ("pycocoevalcap", "selenium", "transformers")


def test_every_cuda_test_file_imports_without_what_a_gpu_machine_lacks(tmp_path):
    """``pytest --collect-only -m cuda`` over the files gpu-check runs, with pycocoevalcap, selenium and transformers
    unimportable and no java on PATH: no collection error, and CUDA tests in every file. (tests/test_runtime.py
    once imported capxai.train, hence pycocoevalcap, at module level: one collection error stopped every test.)"""
    blocker = tmp_path / "sitecustomize.py"
    # None in sys.modules: `import name` raises ModuleNotFoundError and importlib.util.find_spec(name) says None,
    # as for a package that is not installed.
    blocker.write_text(f"import sys\nsys.modules.update(dict.fromkeys({ABSENT_THERE!r}))\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]),
           "PATH": str(Path(sys.executable).parent)}  # no java
    files = gpu_check.cuda_test_files()
    assert "tests/test_cuda_ops.py" in files and "tests/test_runtime.py" in files
    result = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "cuda", "-p",
                             "no:cacheprovider"] + files, cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "error" not in result.stdout.lower(), result.stdout[-3000:]
    collected = {line.split("::")[0] for line in result.stdout.splitlines() if "::" in line}
    assert collected == set(files), set(files) - collected


def _stamp(**changes):
    stamp = {"torch": "2.11.0+cu130", "suffix": ".cpython-312-x86_64-linux-gnu.so", "arch": "9.0",
             "sources": gpu_check.sources_digest()}
    return {**stamp, **changes}


@pytest.fixture
def prebuilt(tmp_path, monkeypatch):
    """A fake prebuilt folder: write(stamp) puts the stamp and an extension file in place."""
    monkeypatch.setattr(gpu_check, "PREBUILT", tmp_path / "gpu-prebuilt")

    def write(stamp):
        library = tmp_path / "gpu-prebuilt" / "lib" / "capxai"
        library.mkdir(parents=True, exist_ok=True)
        (library / f"_C{stamp['suffix']}").write_bytes(b"")
        (tmp_path / "gpu-prebuilt" / "stamp.json").write_text(json.dumps(stamp))
    return write


RUNNING = {"torch": "2.11.0+cu130", "suffix": ".cpython-312-x86_64-linux-gnu.so", "capability": "9.0"}


def test_a_matching_prebuilt_build_is_used(prebuilt):
    prebuilt(_stamp())
    assert gpu_check.prebuilt_mismatch(RUNNING) is None


@pytest.mark.parametrize("changes,running,message", [
    ({"sources": "0" * 64}, {}, "other sources"),
    ({}, {"torch": "2.12.0+cu130"}, "for torch 2.11.0"),
    ({}, {"suffix": ".cpython-313-x86_64-linux-gnu.so"}, "for Python .cpython-312"),
    ({}, {"capability": "10.0"}, "this GPU is sm 10.0"),
])
def test_a_prebuilt_build_that_does_not_match_is_not_used(prebuilt, changes, running, message):
    prebuilt(_stamp(**changes))
    assert message in gpu_check.prebuilt_mismatch({**RUNNING, **running})


def test_without_a_prebuilt_build_the_gpu_machine_compiles(prebuilt):
    assert "make gpu-prebuild" in gpu_check.prebuilt_mismatch(RUNNING)


def test_the_sources_digest_follows_the_sources(tmp_path, monkeypatch):
    (tmp_path / "csrc").mkdir()
    (tmp_path / "csrc" / "op.cu").write_text("a")
    (tmp_path / "setup.py").write_text("")
    monkeypatch.setattr(gpu_check, "ROOT", tmp_path)
    before = gpu_check.sources_digest()
    (tmp_path / "csrc" / "op.cu").write_text("b")
    assert gpu_check.sources_digest() != before


def test_the_check_plan_fits_the_device_budget(tmp_path):
    """Its steps' expected device time (with a compile there, the worst case) stays under 10 minutes less the
    machine's start (about 2), and it runs the CUDA tests, both sanitizers and the benchmarks."""
    context = gpu_check.Context(python=sys.executable, out=tmp_path, dry_run=False)
    steps = gpu_check.check_steps(context)
    assert {"tests", "memcheck", "racecheck", "bench"} <= {step.name for step in steps if step.gpu}
    compile_there, wheels = 50, 5
    assert sum(step.expected_seconds for step in steps if step.gpu) + compile_there + wheels <= 8 * 60


def test_the_report_lists_each_step_and_why_tests_were_skipped(tmp_path):
    """The report's steps table (result, time here, expected device time) and the skipped CUDA tests by reason:
    what the README promises for the GPU training tests that need pycocoevalcap and Java."""
    (tmp_path / "steps.json").write_text(json.dumps({"plan": "check", "dry_run": False, "steps": [
        {"name": "build", "status": "pass", "seconds": 3, "expected_seconds": 5, "estimate": False,
         "note": "the prebuilt build, nothing compiled"},
        {"name": "memcheck", "status": "fail (exit 99)", "seconds": 12, "expected_seconds": 15, "estimate": False}]}))
    (tmp_path / "tests.xml").write_text(
        '<testsuites><testsuite><testcase classname="tests.test_runtime" name="test_training_on_cuda">'
        '<skipped message="training validates with CIDEr (pycocoevalcap + Java); missing here: java"/></testcase>'
        '<testcase classname="tests.test_cuda_ops" name="test_rows"/></testsuite></testsuites>')
    report = subprocess.run([sys.executable, str(ROOT / "tools" / "gpu_report.py"), str(tmp_path)], capture_output=True,
                            text=True, check=True).stdout
    assert "| build | pass | 3 s | 5 s | the prebuilt build, nothing compiled |" in report
    assert "| memcheck | fail (exit 99) | 12 s | 15 s |" in report
    assert "| test_runtime | 0 | 0 | 1 |" in report and "| test_cuda_ops | 1 | 0 | 0 |" in report
    assert "- 1: training validates with CIDEr (pycocoevalcap + Java); missing here: java" in report
