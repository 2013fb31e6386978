"""Prints, per benchmark group, each method's median time relative to the fused op (or to LRP, in the explainer
groups) measured in the same run.

Absolute times on shared machines are noise; ratios within one run are what the benchmark reports.
"""
import collections

import torch

REFERENCES = ("fused", "lrp")  # the method a group's ratios are relative to: the fused op, else LRP


def pytest_report_header(config):
    return (f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
            f"CUDA available: {torch.cuda.is_available()}")


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
        reference = next((name for name in REFERENCES if name in medians), None)
        if reference is None:
            continue
        fused = medians[reference]
        ratios = ", ".join(f"{method} {median / fused:.2f}x" for method, median in sorted(medians.items())
                           if method != reference)
        terminalreporter.write_line(f"{group}: {reference} {fused * 1e3:.2f} ms; {ratios}")
