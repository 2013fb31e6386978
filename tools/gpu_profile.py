"""Where each op's CUDA time goes, at the benchmark sizes: torch.profiler's kernel table per op (GPU check notes).

    python tools/gpu_profile.py > profile.txt
"""
import torch
from torch.profiler import ProfilerActivity, profile

from capxai.ops import lrp_additive_attention, lrp_linear, lrp_lstm, lrp_sdpa


def randn(*shape):
    return torch.randn(*shape, device="cuda")


def cases():
    values, weights = randn(32, 197, 512), torch.softmax(randn(32, 197), -1)
    yield "lrp_additive_attention K=20 B=32 N=197 D=512", lambda: lrp_additive_attention(values, weights,
                                                                                       randn(20, 32, 512))
    x, w, b = randn(32 * 20, 512), randn(10000, 512), randn(10000)
    relevance = randn(20, 32 * 20, 10000)
    yield "lrp_linear N=640 In=512 Out=10000 K=20", lambda: lrp_linear(x, w, b, relevance)
    q, k, v = randn(32, 8, 20, 64), randn(32, 8, 196, 64), randn(32, 8, 196, 64)
    rel = randn(20, 32, 8, 20, 64)
    yield "lrp_sdpa constant K=20 B=32 h=8x64 Lq=20 Lk=196", lambda: lrp_sdpa(q, k, v, rel)
    yield "lrp_sdpa attnlrp K=20 B=32 h=8x64 Lq=20 Lk=196", lambda: lrp_sdpa(q, k, v, rel, mode="attnlrp")
    sx, h0, c0 = randn(20, 32, 1536), randn(32, 512), randn(32, 512)
    wih, whh, bih, bhh = randn(2048, 1536) * 0.05, randn(2048, 512) * 0.05, randn(2048), randn(2048)
    rh = randn(20, 20, 32, 512)
    yield "lrp_lstm K=20 T=20 B=32 H=512 D=1536", lambda: lrp_lstm(sx, h0, c0, wih, whh, bih, bhh, rh)


def main():
    for name, run in cases():
        for _ in range(3):
            run()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                run()
            torch.cuda.synchronize()
        print(f"\n### {name} (5 calls)")
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12, max_name_column_width=60))


if __name__ == "__main__":
    main()
