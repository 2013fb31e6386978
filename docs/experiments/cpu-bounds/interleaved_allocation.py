"""A fresh 258 MB output, written once, interleaved with pauses: what huge pages cost on a ballooned VM.

Run twice and compare: ``python interleaved_allocation.py`` (4 KiB pages) and
``THP_MEM_ALLOC_ENABLE=1 python interleaved_allocation.py`` (PyTorch puts every allocation on huge pages).
Prints the time of ``lrp_additive_attention`` (paper sizes) and of a clone of the same bytes, after 0 s and 3 s pauses.
"""
import time

import torch

from capxai import ops


def main():
    targets, batch, regions, dim = 20, 32, 197, 512
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(batch, regions, dim, generator=generator)
    weights = torch.softmax(torch.randn(batch, regions, generator=generator), -1)
    relevance = torch.randn(targets, batch, dim, generator=generator)
    source = torch.ones(targets * batch * regions * dim)
    calls = {"op": lambda: ops.lrp_additive_attention(values, weights, relevance), "clone": source.clone}
    for pause in (0, 0, 3, 3, 3):
        for name, call in calls.items():
            time.sleep(pause)
            start = time.perf_counter()
            call()
            print(f"{name:5s} after a {pause} s pause: {(time.perf_counter() - start) * 1e3:4.0f} ms")


if __name__ == "__main__":
    main()
