"""Crash-point campaign (issue 24): each command is killed with SIGKILL (no handler, no clean-up) at random points
of its run, then rerun; the rerun must finish, and every file in the output folder must be whole.

    .venv/bin/python docs/experiments/durability/crash_points.py --work runs/issue24/crash --points 10

"Whole" means: every json parses, every .pt loads with ``torch.load(weights_only=True)``, every PNG decodes, the
manifest's size and sha256 of every recorded file match its bytes, and no temporary or staging file is left.
Commands: ``train`` (resumes), ``evaluate`` (rerun with --overwrite when the kill came after its writes),
``explain --split`` (shards, resumes), ``data scenes`` (rerun with --overwrite when the folder was renamed into
place). Kill times are drawn uniformly over one uninterrupted run's duration (measured first). Prints a markdown
table and writes ``crash_points.json`` in the work folder.
"""
import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from PIL import Image

CAPXAI = [sys.executable, "-m", "capxai"]
TINY = ["--hidden", "8", "--attention-dim", "8", "--min-count", "1", "--image-size", "32", "--workers", "0"]


def commands(work: Path, out: Path) -> dict:
    data = ["--split-file", str(work / "scenes" / "dataset_scenes.json"), "--image-root", str(work / "scenes")]
    checkpoint = str(work / "trained" / "best.pt")
    return {
        "train": ["train", *data, "--out", str(out), *TINY, "--epochs", "3", "--batch-size", "4"],
        "evaluate": ["evaluate", "--checkpoint", checkpoint, *data, "--out", str(out), "--beam-size", "2",
                     "--workers", "0"],
        "explain shards": ["explain", "--checkpoint", checkpoint, *data, "--split", "test", "--shard-size", "2",
                           "--method", "all", "--out", str(out), "--workers", "0"],
        "data scenes": ["data", "scenes", "--out", str(out), "--train", "300", "--val", "5", "--test", "5"],
    }


def problems_in(folder: Path) -> list:
    """What is not whole in ``folder`` (empty: all whole)."""
    found = []
    if not folder.exists():
        return found
    leftovers = [p for p in folder.parent.rglob("*") if p.name.endswith(".tmp") or ".partial-" in p.name
                 or p.name.startswith(".report-")]
    found += [f"leftover {p}" for p in leftovers]
    manifest = folder / ".capxai-manifest.json"
    recorded = json.loads(manifest.read_text())["files"] if manifest.is_file() else {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            if path.suffix == ".json":
                json.loads(path.read_text())
            elif path.suffix == ".pt":
                torch.load(path, weights_only=True)
            elif path.suffix == ".png":
                with Image.open(path) as image:
                    image.load()
        except Exception as error:  # noqa: BLE001 (any failure to read is what this looks for)
            found.append(f"unreadable {path}: {error}")
        entry = recorded.get(str(path.relative_to(folder)))
        if entry and "sha256" in entry and hashlib.sha256(path.read_bytes()).hexdigest() != entry["sha256"]:
            found.append(f"manifest mismatch {path}")
    return found


def run(arguments, timeout=900):
    return subprocess.run(CAPXAI + arguments, capture_output=True, text=True, timeout=timeout)


def killed_at(arguments, seconds: float) -> str:
    """Starts the command and SIGKILLs it (its whole process group) after ``seconds``; returns how it ended."""
    process = subprocess.Popen(CAPXAI + arguments, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    try:
        process.wait(timeout=seconds)
        return "finished before the kill"
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        return "killed"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--points", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    work = args.work.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    assert run(["data", "scenes", "--out", str(work / "scenes"), "--train", "16", "--val", "3", "--test", "6",
                "--size", "32"]).returncode == 0
    assert run(commands(work, work / "trained")["train"][:-4] + ["--epochs", "1"]).returncode == 0
    draw = random.Random(args.seed)
    results = {}
    for name in commands(work, work / "x"):
        out = work / name.replace(" ", "-") / "full"
        started = time.monotonic()
        full = run(commands(work, out)[name])
        assert full.returncode == 0, full.stderr[-2000:]
        duration = time.monotonic() - started
        rows = []
        for point in range(args.points):
            out = work / name.replace(" ", "-") / f"point-{point}"
            arguments = commands(work, out)[name]
            at = draw.uniform(0.5, duration)
            how = killed_at(arguments, at)
            after_kill = problems_in(out)
            rerun = run(arguments)
            if rerun.returncode == 2 and "--overwrite" in rerun.stderr:  # its results were whole already
                rerun = run(arguments + ["--overwrite"])
            rows.append({"kill_at_s": round(at, 2), "how": how, "problems_after_kill": after_kill,
                         "rerun_status": rerun.returncode, "problems_after_rerun": problems_in(out),
                         "rerun_error": rerun.stderr[-300:] if rerun.returncode else ""})
            results[name] = {"uninterrupted_s": round(duration, 1), "points": rows}
            (work / "crash_points.json").write_text(json.dumps(results, indent=2))  # as it goes: a long campaign
            print(f"{name} point {point}: {how} at {at:.1f} s, rerun exit {rerun.returncode}, "
                  f"not whole after the rerun: {len(rows[-1]['problems_after_rerun'])}", flush=True)
    print("| command | uninterrupted | kills | reruns that finished | files not whole after the kill | "
          "after the rerun |\n|---|---|---|---|---|---|")
    for name, result in results.items():
        rows = result["points"]
        print(f"| {name} | {result['uninterrupted_s']} s | {sum(r['how'] == 'killed' for r in rows)} | "
              f"{sum(r['rerun_status'] == 0 for r in rows)}/{len(rows)} | "
              f"{sum(bool(r['problems_after_kill']) for r in rows)} | "
              f"{sum(bool(r['problems_after_rerun']) for r in rows)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
