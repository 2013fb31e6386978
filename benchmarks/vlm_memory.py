"""Peak memory of explaining every caption word of a SmolVLM-256M-sized model (benchmarks/test_vlm.py's model and
inputs), each configuration in a fresh process: its peak resident memory (``ru_maxrss``) minus the peak after the
model's no-grad forward, which every configuration shares (issue 38: LRP with chunking at most 2x Gradient x
Input's).

Run: ``python benchmarks/vlm_memory.py [--device cuda]``; prints a markdown table. On CUDA the peak is
``torch.cuda.max_memory_allocated`` instead of the process's resident memory.
"""
import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

import torch

# (method, words per backward): all at once, a given chunk, or "budget=MiB" (the chunk the memory budget picks)
CONFIGURATIONS = [("gradient-x-input", None), ("lrp", None), ("lrp", 5), ("lrp", 1), ("lrp", "budget=200")]


def _peak_bytes(device: str) -> int:
    if device == "cuda":
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def measure(method: str, chunk_size, device: str) -> dict:
    """In this process: the model, one no-grad forward (the baseline peak), then the explanation (the peak)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from test_vlm import CAPTION, _smolvlm_sized

    from capxai.explain.vlm_lrp import vlm_relevance

    torch.set_num_threads(2)
    model, inputs = _smolvlm_sized()
    model, inputs = model.to(device), {name: value.to(device) for name, value in inputs.items()}
    length = inputs["input_ids"].shape[1]
    positions = torch.arange(length - CAPTION, length, device=device)
    with torch.no_grad():
        model(**inputs, use_cache=False, logits_to_keep=positions - 1)
    baseline = _peak_bytes(device)
    budget = int(chunk_size.split("=")[1]) << 20 if isinstance(chunk_size, str) else None
    explained = vlm_relevance(model, inputs, positions, method=method, memory_budget=budget,
                              chunk_size=None if budget is not None else chunk_size or CAPTION)
    return {"method": method, "chunk_size": chunk_size, "used": explained.words_per_backward, "baseline": baseline,
            "peak": _peak_bytes(device)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--one", nargs=2, metavar=("METHOD", "CHUNK"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        chunk = None if args.one[1] == "all" else args.one[1] if args.one[1].startswith("budget=") else int(args.one[1])
        print(json.dumps(measure(args.one[0], chunk, args.device)))
        return
    rows = []
    for method, chunk in CONFIGURATIONS:
        output = subprocess.run([sys.executable, __file__, "--device", args.device, "--one", method,
                                 "all" if chunk is None else str(chunk)], capture_output=True, text=True, check=True)
        rows.append(json.loads(output.stdout.strip().splitlines()[-1]))
    reference = next(row["peak"] - row["baseline"] for row in rows if row["method"] == "gradient-x-input")
    print("| method | words per backward | peak over the forward's | relative to Gradient x Input |")
    print("| --- | --- | --- | --- |")
    for row in rows:
        extra = row["peak"] - row["baseline"]
        asked = row["chunk_size"] if isinstance(row["chunk_size"], str) else "given"
        print(f"| {row['method']} | {row['used']} ({'all' if row['chunk_size'] is None else asked}) | "
              f"{extra / 2 ** 20:.0f} MiB | {extra / reference:.2f} |")


if __name__ == "__main__":
    main()
