"""Prints, per benchmark group, each method's median time relative to the fused op measured in the same run.

Absolute times on shared machines are noise; ratios within one run are what the benchmark reports.
"""
import collections

import torch

FUSED = "fused"


def pytest_report_header(config):
    return f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, CUDA available: {torch.cuda.is_available()}"


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    session = getattr(config, "_benchmarksession", None)
    if session is None or not session.benchmarks:
        return
    groups = collections.defaultdict(dict)
    for bench in session.benchmarks:
        if bench.has_error or not bench.stats:
            continue
        method = bench.param if bench.param else bench.name
        groups[bench.group][method.split("-")[0]] = bench.stats.median
    terminalreporter.section("median time relative to the fused op (same run)")
    for group, medians in sorted(groups.items()):
        if FUSED not in medians:
            continue
        fused = medians[FUSED]
        ratios = ", ".join(f"{method} {median / fused:.2f}x" for method, median in sorted(medians.items())
                           if method != FUSED)
        terminalreporter.write_line(f"{group}: fused {fused * 1e3:.2f} ms; {ratios}")
