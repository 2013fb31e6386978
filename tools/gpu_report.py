"""Writes the markdown report of ``make gpu-check`` from the files its steps left in one folder (stdout).

    python tools/gpu_report.py runs/gpu-check > runs/gpu-check/report.md
"""
import collections
import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

FUSED = "fused"


def card():
    try:
        query = "name,driver_version,memory.total,clocks.max.sm"
        line = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"], capture_output=True,
                              text=True, timeout=30).stdout.strip().splitlines()[0]
        return f"{line} (nvidia-smi: name, driver, memory, max SM clock)"
    except (OSError, IndexError, subprocess.SubprocessError) as error:
        return f"nvidia-smi did not answer ({error})"


def software():
    import torch
    return (f"torch {torch.__version__}, CUDA {torch.version.cuda}, "
            f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU visible'}")


def read_steps(folder):
    """``steps.json`` of tools/gpu_check.py:
    {plan, dry_run, steps: [{name, status, seconds, expected_seconds, ...}]}."""
    payload = read_json(folder / "steps.json")
    return payload if isinstance(payload, dict) and isinstance(payload.get("steps"), list) else None


def steps(folder):
    payload = read_steps(folder)
    if payload is None:
        return ["(no steps.json: the check did not run to its end)"]
    where = "here (no GPU)" if payload.get("dry_run") else "here"
    rows = ["| step | result | time " + where + " | expected on one H100 | note |", "| --- | --- | --- | --- | --- |"]
    for step in payload["steps"]:
        result = step["status"] if step["status"] != "skipped" else f"skipped: {step.get('why', '')}"
        expected = f"{step['expected_seconds']} s{' (estimate)' if step.get('estimate') else ''}"
        rows.append(f"| {step['name']} | {result} | {step['seconds']} s | {expected} | {step.get('note', '')} |")
    total = sum(step["expected_seconds"] for step in payload["steps"])
    rows += ["", f"Expected device time of the steps: about {total} s on one H100, after the machine's start."]
    return rows


def collected(folder):
    """The dry run's collection: how many CUDA tests each file holds (``pytest --collect-only -q`` lines)."""
    path = folder / "collect.log"
    if not path.exists():
        return []
    counts = collections.Counter(line.split("::")[0] for line in path.read_text().splitlines() if "::" in line)
    summary = [line for line in path.read_text().splitlines() if "collected" in line or "error" in line.lower()]
    lines = [f"Collected without a GPU: {sum(counts.values())} CUDA tests in {len(counts)} files "
             f"({summary[-1].strip() if summary else 'no summary line'}).", ""]
    return lines + [f"- {name}: {count}" for name, count in sorted(counts.items())] + [""]


def test_groups(folder):
    path = folder / "tests.xml"
    if not path.exists():
        return ["(no test results: the tests did not run)"]
    counts = collections.defaultdict(collections.Counter)
    failures = []
    skip_reasons = collections.Counter()
    for case in ElementTree.parse(path).iter("testcase"):
        group = case.get("classname", "?").split(".")[-1]  # "tests.test_lrp_linear" -> the module
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed"
                failures.append(f"{case.get('classname')}::{case.get('name')}: "
                                f"{(child.get('message') or '').splitlines()[0][:200] if child.get('message') else ''}")
            elif child.tag == "skipped":
                outcome = "skipped"
                skip_reasons[(child.get("message") or "?").splitlines()[0][:160]] += 1
        counts[group][outcome] += 1
    lines = ["| test group | passed | failed | skipped |", "| --- | --- | --- | --- |"]
    for group, count in sorted(counts.items()):
        lines.append(f"| {group} | {count['passed']} | {count['failed']} | {count['skipped']} |")
    if failures:
        lines += ["", "Failures:", ""] + [f"- {failure}" for failure in failures]
    if skip_reasons:
        lines += ["", "Skipped, by reason:", ""] + [f"- {count}: {reason}" for reason, count in skip_reasons.items()]
    return lines


def sanitizer(folder, tool):
    path = folder / f"{tool}.log"
    if not path.exists():
        return f"{tool}: did not run"
    text = path.read_text(errors="replace")
    summary = re.findall(r"(?:ERROR|RACECHECK) SUMMARY: .*", text)
    checked = re.findall(r"gpu_sanitize: .*", text)
    return f"{tool}: {'; '.join(summary) or 'no summary line'}; {'; '.join(checked) or 'the script printed no result'}"


def benchmarks(folder):
    path = folder / "bench.json"
    try:
        results = json.loads(path.read_text())["benchmarks"]
    except (OSError, ValueError, KeyError):
        return ["(no benchmark results: the benchmarks did not run or did not finish)"]
    groups = collections.defaultdict(dict)
    for bench in results:
        method = (bench.get("param") or bench["name"]).split("-")[0]
        groups[bench["group"]][method] = bench["stats"]["median"]
    lines = ["| benchmark | fused median | other methods, time relative to fused |", "| --- | --- | --- |"]
    for group, medians in sorted(groups.items()):
        fused = medians.get(FUSED)
        if fused is None:
            continue
        others = ", ".join(f"{method} {median / fused:.2f}x" for method, median in sorted(medians.items())
                           if method != FUSED)
        lines.append(f"| {group} | {fused * 1e3:.3f} ms | {others} |")
    return lines


def read_json(path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def demo_time(folder):
    times = read_json(folder / "demo-quick" / "demo.json")
    if not isinstance(times, dict) or "total_seconds_this_run" not in times:
        return "quick demo (`--device cuda`): no time (the demo did not run or did not finish)"
    return (f"quick demo (`--device cuda`): {times['total_seconds_this_run']:.0f} s this run on "
            f"{times.get('machine', '?')} (stages in {folder / 'demo-quick' / 'demo.json'})")


def scale_benchmark(folder):
    """The scale benchmark's results (benchmarks/test_scale.py, ``CAPXAI_SCALE=gpu``) from its ``extra_info``."""
    payload = read_json(folder / "scale.json")
    if not isinstance(payload, dict) or not payload.get("benchmarks"):
        return ["(no scale benchmark results: it did not run or did not finish)"]
    explain, train, loader = [], [], []
    for bench in payload["benchmarks"]:
        info, median = bench.get("extra_info", {}), bench["stats"]["median"]
        name = f"{info.get('kind', '')} {info.get('device', '?')}".strip()
        if "lrp_over_gxi" in info:
            explain.append(f"| {name} | B={info['batch']} T={info['words_per_caption']} | "
                           f"{info['lrp_seconds'] * 1e3:.1f} ms ({info['lrp_images_per_second']:.1f} images/s) | "
                           f"{info['gxi_seconds'] * 1e3:.1f} ms ({info['gxi_images_per_second']:.1f} images/s) | "
                           f"{info['lrp_over_gxi']:.2f}x (target <= {info['target']}x) |")
        elif "precision" in info:
            train.append(f"| {name} {info['precision']} | B={info['batch']} ({info['captions']} captions) | "
                         f"{median * 1e3:.1f} ms | {info['images_per_second']:.1f} images/s |")
        elif "workers" in info:
            loader.append(f"| loader {info['device']}, {info['workers']} worker{'s' if info['workers'] != 1 else ''} | "
                          f"{info['images']} images | "
                          f"{median * 1e3:.1f} ms | {info['images_per_second']:.1f} images/s |")
    lines = []
    if explain:
        lines += ["| explain every word | batch | LRP | Gradient x Input | LRP / GxI |",
                  "| --- | --- | --- | --- | --- |"] + explain + [""]
    if train or loader:
        lines += ["| training step / data loader | batch | median | throughput |", "| --- | --- | --- | --- |"]
        lines += train + loader
    return lines


def explain5k(folder):
    result = read_json(folder / "explain5k.json")
    if not isinstance(result, dict) or "seconds" not in result:
        return "`capxai explain` over the test split: no result (tools/gpu_scale.py did not run or did not finish)"
    return (f"`capxai explain --method lrp` over {result['images']} test images ({result['image_size']} px, "
            f"{result['model']} + {result['encoder']}, {result['words']} words): {result['seconds']:.1f} s, "
            f"{result['images_per_second']:.1f} images/s, {result['words_per_second']:.0f} words/s on "
            f"{result['device_name']}; {result['megabytes_per_image']:.1f} MB of explanations an image")


def main(argv):
    folder = Path(argv[1] if len(argv) > 1 else "runs/gpu-check")
    info = folder / "info.log"
    payload = read_steps(folder) or {}
    title = (f"# capxai `make gpu-{payload.get('plan', 'check')}`"
             f"{' — dry run without a GPU' if payload.get('dry_run') else ''}")
    lines = [title, "", f"- card: {card()}", f"- software: {software()}"]
    if info.exists():
        lines += [f"- {line.strip()}" for line in info.read_text().splitlines()[:3]]
    lines += ["", "## Steps", ""] + steps(folder)
    if payload.get("plan", "check") == "check":
        lines += ["", "## CUDA tests (`pytest -m cuda` over the test files that hold CUDA tests)", ""]
        lines += collected(folder) + test_groups(folder)
        lines += ["", "## compute-sanitizer on `tools/gpu_sanitize.py`", "",
                  f"- {sanitizer(folder, 'memcheck')}", f"- {sanitizer(folder, 'racecheck')}"]
        lines += ["", "## GPU benchmarks (medians of one run; ratios within that run; `bound` over `fused` is the "
                  "fraction of the bound reached, benchmarks/test_bounds.py)", ""] + benchmarks(folder)
    else:
        lines += ["", "## End to end on the GPU", "", f"- {demo_time(folder)}", f"- {explain5k(folder)}", "",
                  "Scale benchmark (`CAPXAI_SCALE=gpu pytest benchmarks/test_scale.py`: VGG16 at 224 px, hidden 512; "
                  "medians of one run):", ""] + scale_benchmark(folder)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
