"""``make gpu-check`` and ``make gpu-bench``: the CUDA side of capxai on a lent GPU machine, planned to fit its budget.

    python tools/gpu_check.py check [--dry-run]     # CUDA tests, compute-sanitizer, GPU op benchmarks (< 10 min)
    python tools/gpu_check.py bench [--dry-run]     # quick demo on the GPU, scale benchmark, LRP of 5,000 images
    python tools/gpu_check.py prebuild --python P   # the CUDA build for the GPU machine's torch, made here

A GPU machine of this project is lent for about 15 minutes in all, start-up included, and has torch, nvcc and
compute-sanitizer but no network and no capxai dependencies beyond torch. So ``check`` compiles nothing when the build
``prebuild`` made here (``make gpu-prebuild``: the GPU machine's torch and Python, sm_90) is carried with the tree
and matches the running torch, Python, GPU and sources (else it compiles there, about 50 s on 16 cores); the
explainers' packages come as carried wheels (``make gpu-wheels``); only test files with CUDA tests are collected,
and each imports without pycocoevalcap, Java or selenium (tests/test_gpu_check.py). Every step runs even when an
earlier one failed; the report (``runs/gpu-check/report.md``) lists each step's result and time.

``--dry-run`` rehearses a plan on a machine without a GPU: it runs every step that needs none (the build for this
machine's torch, the extension's kernel table, the collection of every CUDA test and benchmark, the report) and says
which it skipped, with the device time each step is expected to take on one H100.
"""
import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, List, Optional

ROOT = Path(__file__).resolve().parent.parent
PREBUILT = ROOT / "build" / "gpu-prebuilt"
GPU_BUILD = ROOT / "build" / "gpu"        # compiled on the GPU machine when the prebuilt build does not match
LOCAL_CUDA_BUILD = ROOT / "build" / "cuda"  # make cuda-check's build: the dry run's extension
WHEELS = ROOT / ".whl"
SITE = ROOT / "build" / "gpu-site"
STAMP = "stamp.json"
# Device seconds a step takes on one H100 (the 2026-11-26 run, docs/experiments/gpu/, unless marked an estimate);
# a machine's start (about 1-2 minutes) comes before them and is not the script's. One lent command runs at most:
BUDGET_SECONDS = 600


def sources_digest() -> str:
    """sha256 of what the extension is built from: a prebuilt build of other sources is stale."""
    digest = hashlib.sha256()
    files = sorted(p for p in (ROOT / "csrc").rglob("*") if p.is_file()) + [ROOT / "setup.py"]
    for path in files:
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def extension_file(lib: Path) -> Optional[Path]:
    found = sorted(lib.glob("capxai/_C*.so"))
    return found[0] if found else None


def cuda_test_files() -> List[str]:
    """The test modules that hold CUDA tests (a ``cuda`` mark, or the ``device`` fixture that has a CUDA parameter);
    the others may import packages a bare GPU machine lacks and hold no CUDA test."""
    import re
    pattern = re.compile(r"mark\.cuda|def test\w*\([^)]*\bdevice\b")
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py") if pattern.search(p.read_text()))


def cuda_benchmark_files() -> List[str]:
    """Benchmark modules with CUDA cases; the scale benchmark is gpu-bench's."""
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "benchmarks").glob("test_*.py")
                  if "cuda" in p.read_text() and p.name != "test_scale.py")


@dataclasses.dataclass
class Step:
    """One step of a plan. ``gpu`` runs on a GPU machine; ``dry`` runs without one (None: the step is skipped there,
    ``why`` says why). Commands are argument lists, run from the repository root with ``env``."""
    name: str
    expected_seconds: int
    gpu: Optional[List[str]]
    dry: Optional[List[str]] = None
    why: str = "needs a GPU"
    dry_note: str = ""  # what the dry command checks, where it is less than the step
    estimate: bool = False
    env: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Context:
    python: str
    out: Path
    dry_run: bool
    extension: Optional[Path] = None
    notes: dict = dataclasses.field(default_factory=dict)  # step -> a line for the report
    gpu_machine_python: bool = False  # the running torch and Python are the prebuilt build's (the GPU machine's)
    running: dict = dataclasses.field(default_factory=dict)  # _probe(python), read once per plan


# -- the build ------------------------------------------------------------------------------------------------
def _probe(python: str) -> dict:
    """torch version, extension suffix and (where a GPU is) compute capability of ``python``'s torch."""
    code = ("import json, sysconfig, torch; print(json.dumps({'torch': torch.__version__, "
            "'suffix': sysconfig.get_config_var('EXT_SUFFIX'), 'capability': '%d.%d' % "
            "torch.cuda.get_device_capability() if torch.cuda.is_available() else None}))")
    return json.loads(subprocess.run([python, "-c", code], check=True, capture_output=True, text=True).stdout)


def prebuilt_mismatch(running: dict) -> Optional[str]:
    """Why the carried prebuilt build cannot serve ``running`` (None when it can)."""
    stamp_path = PREBUILT / STAMP
    if not stamp_path.exists() or extension_file(PREBUILT / "lib") is None:
        return f"no prebuilt build in {PREBUILT} (make gpu-prebuild, then carry it)"
    stamp = json.loads(stamp_path.read_text())
    if stamp["sources"] != sources_digest():
        return "the prebuilt build is of other sources than these (csrc/ or setup.py changed since make gpu-prebuild)"
    for key, what in (("torch", "torch"), ("suffix", "Python")):
        if stamp[key] != running[key]:
            return f"the prebuilt build is for {what} {stamp[key]}, this machine runs {running[key]}"
    if running.get("capability") and running["capability"] not in stamp["arch"].split(";"):
        return f"the prebuilt build is for sm {stamp['arch']}, this GPU is sm {running['capability']}"
    return None


def _compile(python: str, build: Path, arch: str, log: Path) -> int:
    env = {**os.environ, "FORCE_CUDA": "1", "TORCH_CUDA_ARCH_LIST": arch, "MAX_JOBS": str(os.cpu_count() or 2)}
    with open(log, "a") as out:
        return subprocess.run([python, "setup.py", "--quiet", "build_ext", "--build-lib", str(build / "lib"),
                               "--build-temp", str(build / "temp")], cwd=ROOT, env=env, stdout=out,
                              stderr=subprocess.STDOUT).returncode


def build_step(ctx: Context) -> int:
    """Chooses the extension the later steps load (``ctx.extension``): the prebuilt build when it matches the
    running torch, Python, GPU and sources, else a compile for this GPU. A dry run whose Python is not the GPU
    machine's says whether the prebuilt build is current (a note, not a failure: CI has none) and compiles (or
    reuses) make cuda-check's CUDA build for this machine's torch instead; with the GPU machine's torch and Python
    (``--python build/gpu-venv/bin/python``, what make gpu-prebuild installs) it rehearses that machine exactly."""
    log = ctx.out / "build.log"
    running = ctx.running
    mismatch = prebuilt_mismatch(running)
    stamp = json.loads((PREBUILT / STAMP).read_text()) if (PREBUILT / STAMP).exists() else None
    with open(log, "w") as out:
        out.write(f"running: {json.dumps(running)}\nprebuilt: {json.dumps(stamp)}\n")
    if mismatch is None:
        ctx.extension = extension_file(PREBUILT / "lib")
        ctx.gpu_machine_python = True
        ctx.notes["build"] = f"the prebuilt build, nothing compiled: {ctx.extension.relative_to(ROOT)}"
        code = 0
    elif ctx.dry_run:
        current = stamp is not None and stamp["sources"] == sources_digest()
        ctx.notes["build"] = (
            f"prebuilt build for torch {stamp['torch']} {stamp['suffix']} sm {stamp['arch']}: "
            f"{'current with these sources' if current else 'STALE (the sources changed): run make gpu-prebuild'}"
            if stamp else "no prebuilt build: the GPU machine would compile (about 50 s); run make gpu-prebuild")
        code = _compile(ctx.python, LOCAL_CUDA_BUILD, os.environ.get("TORCH_CUDA_ARCH_LIST", "9.0"), log)
        ctx.extension = extension_file(LOCAL_CUDA_BUILD / "lib")
    else:
        ctx.notes["build"] = f"compiled here: {mismatch}"
        code = _compile(ctx.python, GPU_BUILD, running["capability"], log)
        ctx.extension = extension_file(GPU_BUILD / "lib")
    print(f"  {ctx.notes['build']}")
    with open(log, "a") as out:
        out.write(ctx.notes["build"] + "\n")
    return code


def wheels_step(ctx: Context) -> int:
    """Installs the carried wheels (zennit, captum, pycocotools for the GPU machine's Python) beside the tree. Dry
    run: says which wheels would travel (they are for the GPU machine's Python, not this one's)."""
    wheels = sorted(WHEELS.glob("*.whl"))
    names = ", ".join(w.name.split("-")[0] for w in wheels)
    if not wheels:
        ctx.notes["wheels"] = ("no wheels in .whl/ (make gpu-wheels): without zennit and captum the explainer tests "
                               "do not collect on a bare GPU machine")
        (ctx.out / "wheels.log").write_text(ctx.notes["wheels"] + "\n")
        return 4
    ctx.notes["wheels"] = f"{len(wheels)} wheels in .whl/: {names}"
    if ctx.dry_run and not ctx.gpu_machine_python:
        return 0
    with open(ctx.out / "wheels.log", "w") as out:
        return subprocess.run([ctx.python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                               "--no-cache-dir", "--upgrade", "--target", str(SITE)] + [str(w) for w in wheels],
                              cwd=ROOT, stdout=out, stderr=subprocess.STDOUT).returncode


# -- the plans ------------------------------------------------------------------------------------------------
def check_steps(ctx: Context) -> List[Step]:
    py, out = ctx.python, ctx.out
    tests, benchmarks = cuda_test_files(), cuda_benchmark_files()
    pytest = [py, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    sanitizer = shutil.which("compute-sanitizer") or "/usr/local/cuda/bin/compute-sanitizer"
    return [
        Step("info", 5, [py, "-m", "capxai.info", "--require-cuda"], [py, "-m", "capxai.info", "--require-cuda"]),
        Step("collect", 10, None, pytest + ["--collect-only", "-m", "cuda"] + tests,
             why="the tests step collects the same files", dry_note="every CUDA test imports and is collected"),
        Step("tests", 90, pytest + ["-m", "cuda", "-rs", "--continue-on-collection-errors",
                                    f"--junitxml={out / 'tests.xml'}"] + tests, estimate=True),
        Step("memcheck", 15, [sanitizer, "--tool", "memcheck", "--error-exitcode", "99", py, "tools/gpu_sanitize.py"]),
        Step("racecheck", 50, [sanitizer, "--tool", "racecheck", "--error-exitcode", "99", py,
                               "tools/gpu_sanitize.py"]),
        Step("bench", 60, pytest + ["-k", "cuda", "--benchmark-only", f"--benchmark-json={out / 'bench.json'}"]
             + benchmarks, pytest + ["--collect-only"] + benchmarks, estimate=True,
             dry_note="the benchmark files import (their CUDA cases exist only where a GPU is)"),
    ]


def bench_steps(ctx: Context) -> List[Step]:
    py, out = ctx.python, ctx.out
    missing = _absent(py, ("zennit", "captum", "pycocotools", "pycocoevalcap")) + (
        [] if shutil.which("java") else ["java"])
    demo = Step("demo", 240, [py, "-m", "capxai.demo", "--quick", "--device", "cuda", "--out",
                              str(out / "demo-quick"), "--overwrite"], estimate=True,
                why="the quick demo runs on the CPU in CI (make demo-check)")
    if missing and not ctx.dry_run:
        demo.gpu = None
        demo.why = f"needs {', '.join(missing)} (pycocoevalcap and Java cannot be carried to a GPU machine)"
    return [
        demo,
        Step("scale", 180, [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "benchmarks/test_scale.py",
                            "--benchmark-only", f"--benchmark-json={out / 'scale.json'}"],
             [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--collect-only", "benchmarks/test_scale.py"],
             estimate=True, env={"CAPXAI_SCALE": "gpu"}, dry_note="collected only"),
        Step("explain5k", 300, [py, "tools/gpu_scale.py", "--out", str(out / "explain5k"), "--result",
                                str(out / "explain5k.json"), "--device", "cuda"],
             [py, "tools/gpu_scale.py", "--out", str(out / "explain5k-dry"), "--result", str(out / "explain5k.json"),
              "--device", "cpu", "--test", "4", "--size", "64"], estimate=True,
             dry_note="the same commands on 4 test images of 64 px on the CPU"),
    ]


def _absent(python: str, modules) -> List[str]:
    """Which of ``modules`` ``python`` cannot import (one process for all)."""
    code = f"import importlib.util; print(*[m for m in {list(modules)!r} if importlib.util.find_spec(m) is None])"
    return subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout.split()


PLANS = {"check": check_steps, "bench": bench_steps}


# -- running --------------------------------------------------------------------------------------------------
def run_step(ctx: Context, step: Step, env: dict) -> dict:
    command = step.dry if ctx.dry_run else step.gpu
    record = {"name": step.name, "expected_seconds": step.expected_seconds, "estimate": step.estimate}
    if command is None:
        print(f"=== {step.name}: skipped ({step.why}) ===")
        return {**record, "status": "skipped", "why": step.why, "seconds": 0}
    print(f"=== {step.name} ===", flush=True)
    started = time.monotonic()
    with open(ctx.out / f"{step.name}.log", "w") as log:
        try:
            code = subprocess.run(command, cwd=ROOT, env={**env, **step.env}, stdout=log,
                                  stderr=subprocess.STDOUT).returncode
        except OSError as error:  # e.g. compute-sanitizer not on PATH
            log.write(f"could not start {command[0]}: {error}\n")
            code = 127
    seconds = round(time.monotonic() - started)
    tail = (ctx.out / f"{step.name}.log").read_text(errors="replace").strip().splitlines()[-2:]
    for line in tail:
        print(f"    {line[:160]}")
    if code:
        print(f"=== {step.name} FAILED (exit {code}; log {ctx.out / (step.name + '.log')}) ===")
    return {**record, "status": "pass" if code == 0 else f"fail (exit {code})", "seconds": seconds,
            "note": step.dry_note if ctx.dry_run else ""}


def run_function(ctx: Context, name: str, expected: int, function: Callable[[Context], int]) -> dict:
    print(f"=== {name} ===", flush=True)
    started = time.monotonic()
    try:
        code = function(ctx)
    except (OSError, subprocess.SubprocessError, ValueError, KeyError) as error:
        with open(ctx.out / f"{name}.log", "a") as log:
            log.write(f"{type(error).__name__}: {error}\n")
        code = 1
    seconds = round(time.monotonic() - started)
    if code:
        print(f"=== {name} FAILED (exit {code}; log {ctx.out / (name + '.log')}) ===")
    return {"name": name, "expected_seconds": expected, "estimate": False, "note": ctx.notes.get(name, ""),
            "status": "pass" if code == 0 else f"fail (exit {code})", "seconds": seconds}


def print_plan(ctx: Context, plan: str, steps: List[Step], first: List[tuple]) -> int:
    rows = [(name, expected, True, "") for name, expected in first]
    rows += [(s.name, s.expected_seconds, (s.dry if ctx.dry_run else s.gpu) is not None, s.why) for s in steps]
    total = sum(expected for _, expected, _, _ in rows)
    print(f"make gpu-{plan}{' (dry run: no GPU)' if ctx.dry_run else ''}: {len(rows)} steps, about {total} s of "
          f"device time on one H100 after the machine's start (one lent command may run {BUDGET_SECONDS} s)")
    for name, expected, runs, why in rows:
        print(f"  {name:<10} ~{expected:>4} s  {'runs' if runs else 'skipped: ' + why}")
    return total


def run_plan(plan: str, ctx: Context, only: Optional[set] = None) -> int:
    running = ctx.running
    if not ctx.dry_run and not running["capability"]:
        print(f"make gpu-{plan}: no CUDA GPU is visible to {ctx.python}; on a machine without one, run "
              f"`make gpu-{plan} DRY_RUN=1` (the rehearsal). Nothing was built or run.", file=sys.stderr)
        return 2
    first = [("build", 50 if prebuilt_mismatch(running) and not ctx.dry_run else 5)]
    if plan == "check":
        first.append(("wheels", 5))
    steps = PLANS[plan](ctx)
    if only is not None:
        unknown = only - {step.name for step in steps} - {name for name, _ in first}
        if unknown:
            print(f"make gpu-{plan}: no step {sorted(unknown)}; its steps: "
                  f"{[name for name, _ in first] + [step.name for step in steps]}", file=sys.stderr)
            return 2
        steps = [step for step in steps if step.name in only]
    ctx.out.mkdir(parents=True, exist_ok=True)
    for stale in ("steps.json", "tests.xml", "bench.json", "scale.json", "explain5k.json", "report.md"):
        (ctx.out / stale).unlink(missing_ok=True)
    print_plan(ctx, plan, steps, first)
    records = [run_function(ctx, "build", first[0][1], build_step)]
    if plan == "check":
        records.append(run_function(ctx, "wheels", 5, wheels_step))
    env = dict(os.environ)
    installed = not ctx.dry_run or ctx.gpu_machine_python
    env["PYTHONPATH"] = os.pathsep.join([str(SITE)] * installed + [str(ROOT)] +
                                        ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    if ctx.extension is not None:
        env["CAPXAI_EXTENSION"] = str(ctx.extension)
    for step in steps:
        records.append(run_step(ctx, step, env))
    (ctx.out / "steps.json").write_text(json.dumps({"plan": plan, "dry_run": ctx.dry_run, "steps": records},
                                                   indent=1))
    report = subprocess.run([ctx.python, "tools/gpu_report.py", str(ctx.out)], cwd=ROOT, env=env,
                            capture_output=True, text=True)
    (ctx.out / "report.md.tmp").write_text(report.stdout)
    os.replace(ctx.out / "report.md.tmp", ctx.out / "report.md")
    failed = [r["name"] for r in records if r["status"].startswith("fail")]
    skipped = [r["name"] for r in records if r["status"] == "skipped"]
    print(f"\nmake gpu-{plan}{' (dry run)' if ctx.dry_run else ''}: "
          f"{len(records) - len(failed) - len(skipped)} passed, {len(failed)} failed {failed or ''}, "
          f"{len(skipped)} skipped {skipped or ''}; took {sum(r['seconds'] for r in records)} s here; "
          f"report {ctx.out / 'report.md'}")
    return 1 if failed or report.returncode else 0


def prebuild(python: str, running: dict, arch: str) -> int:
    """The CUDA build for ``python``'s torch (the GPU machine's, installed here; ``running``: its ``_probe``), with the
    stamp ``check`` matches."""
    PREBUILT.mkdir(parents=True, exist_ok=True)
    code = _compile(python, PREBUILT, arch, PREBUILT / "build.log")
    if code:
        print(f"gpu prebuild failed (log {PREBUILT / 'build.log'})", file=sys.stderr)
        return code
    stamp = {"torch": running["torch"], "suffix": running["suffix"], "arch": arch, "sources": sources_digest()}
    (PREBUILT / STAMP).write_text(json.dumps(stamp, indent=1))
    shutil.rmtree(PREBUILT / "temp", ignore_errors=True)  # not carried: only lib/ and the stamp travel
    library = extension_file(PREBUILT / "lib")
    print(f"prebuilt {library.relative_to(ROOT)} ({library.stat().st_size / 2**20:.1f} MiB) for torch "
          f"{stamp['torch']} {stamp['suffix']} sm {arch}; carry build/gpu-prebuilt and .whl to the GPU machine")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("plan", choices=["check", "bench", "prebuild"])
    parser.add_argument("--dry-run", action="store_true", help="rehearse without a GPU: run what needs none")
    parser.add_argument("--python", default=None, help="the Python with torch (default: this one)")
    parser.add_argument("--out", type=Path, default=None, help="folder of logs and the report "
                        "(default runs/gpu-check, or runs/gpu-bench)")
    parser.add_argument("--only", default=None, help="comma-separated steps of the plan to run (the build always "
                        "runs): e.g. gpu-bench's scale,explain5k in two lent calls of under 10 minutes each")
    parser.add_argument("--arch", default="9.0", help="prebuild: TORCH_CUDA_ARCH_LIST (default 9.0: H100, H200)")
    args = parser.parse_args(argv)
    python = args.python or sys.executable
    try:
        running = _probe(python)
    except (OSError, subprocess.CalledProcessError, ValueError) as error:
        print(f"gpu_check: --python {python} cannot run torch ({type(error).__name__}: {error}); give a Python "
              "that has torch", file=sys.stderr)
        return 2
    if args.plan == "prebuild":
        return prebuild(python, running, args.arch)
    out = args.out or ROOT / "runs" / f"gpu-{args.plan}{'-dry' if args.dry_run else ''}"
    only = set(args.only.split(",")) if args.only else None
    return run_plan(args.plan, Context(python=python, out=out.resolve(), dry_run=args.dry_run, running=running),
                    only)


if __name__ == "__main__":
    sys.exit(main())
