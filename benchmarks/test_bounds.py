"""Every op against its bound, measured in the same run, at the paper's sizes and at transformer sizes, per dtype.

Memory-bound passes are compared with a device-to-device copy of the bytes they must move (``bound=copy``: read the
inputs that scale with the output, write the output; target on a GPU: the op at >= 60 % of the copy's rate, i.e. the
copy's time over the op's >= 0.6). GEMM-bound ops are compared with their own GEMMs run alone as plain
``torch.matmul`` calls in the same dtype (``bound=gemms``; target >= 70 %). The terminal summary prints each group's
``bound`` time relative to ``fused``: that ratio *is* the fraction of the bound reached.

Bounds are taken in the input dtype: what a native half-precision kernel could reach. The ops compute float16 /
bfloat16 inputs in float32 (docs/LRP_RULES.md (Part 2), "Precision"), so in half precision the gap to the bound is the
price of that choice (casts, float32 GEMMs without tensor cores), measured, not hidden.
Run: ``pytest benchmarks/test_bounds.py --benchmark-only`` (on a GPU also ``-k cuda``; ``make gpu-check`` does).
"""

import pytest
import torch

from capxai import ops

CUDA = torch.cuda.is_available()
DEVICES = [pytest.param("cpu", id="cpu")] + ([pytest.param("cuda", id="cuda")] if CUDA else [])
DTYPES = {"cpu": [torch.float32, torch.bfloat16], "cuda": [torch.float32, torch.bfloat16, torch.float16]}

# (name, sizes, devices): paper sizes on every device; transformer sizes on the GPU (and the smallest on the CPU).
SDPA_SIZES = {"paper": dict(targets=20, batch=32, heads=8, queries=20, keys=196, dim=64),
              "self-512": dict(targets=1, batch=1, heads=16, queries=512, keys=512, dim=64),
              "self-2048": dict(targets=1, batch=1, heads=16, queries=2048, keys=2048, dim=64),
              "self-4096": dict(targets=1, batch=1, heads=8, queries=4096, keys=4096, dim=64)}
GPU_ONLY = {"self-2048", "self-4096", "wide"}  # minutes a call on 2 CPU cores


def _sync(device):
    return torch.cuda.synchronize if device == "cuda" else (lambda: None)


def _timed(benchmark, run, device):
    sync = _sync(device)

    def once():
        result = run()
        sync()
        return result
    return benchmark.pedantic(once, rounds=5, warmup_rounds=1)


def _random(*shape, dtype, device, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(device=device, dtype=dtype)


def _full_precision():
    """The bound's GEMMs as the ops run theirs: full float32 (no TF32, no bfloat16 oneDNN)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")


def _skip_unless_supported(device, dtype, name):
    if dtype not in DTYPES[device]:
        pytest.skip(f"{dtype} is not benchmarked on {device}")
    if device == "cpu" and name in GPU_ONLY:
        pytest.skip(f"{name} is benchmarked on the GPU only")


def _dtype_id(dtype):
    return str(dtype).removeprefix("torch.")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=_dtype_id)
@pytest.mark.parametrize("method", ["fused", "bound", "fresh_copy"])
def test_lrp_additive_attention_vs_copy(benchmark, method, dtype, device):
    """Paper sizes: K = 20 words, B = 32, N = 197 regions (+ sentinel) of D = 512. Bytes a pass must move: write
    K*B*N*D, read B*N*D values (the per-context factors are K*B*D, small).

    ``fresh_copy`` copies the same bytes into a newly allocated tensor, as an op that returns its result must: on the
    CPU that pays a page fault per 4 KiB first written, most of the time of a pass this thin (docs/experiments/
    cpu-bounds; run with THP_MEM_ALLOC_ENABLE=1 for PyTorch's huge-page allocations)."""
    _skip_unless_supported(device, dtype, "additive")
    targets, batch, regions, dim = 20, 32, 197, 512
    benchmark.group = f"bound additive_attention {device} {_dtype_id(dtype)} K={targets} B={batch} N={regions} D={dim}"
    values = _random(batch, regions, dim, dtype=dtype, device=device)
    weights = torch.softmax(_random(batch, regions, dtype=dtype, device=device).float(), -1).to(dtype)
    relevance = _random(targets, batch, dim, dtype=dtype, device=device, seed=1)
    source = torch.empty(targets * batch * regions * dim + batch * regions * dim, device=device, dtype=dtype)
    source.fill_(1.0)
    if method == "fused":
        run = lambda: ops.lrp_additive_attention(values, weights, relevance)  # noqa: E731
    elif method == "bound":  # copy the same bytes: one read of the values per target-row chunk is cached
        target = torch.empty_like(source)
        run = lambda: target.copy_(source)  # noqa: E731
    else:
        run = source.clone
    _timed(benchmark, run, device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=_dtype_id)
@pytest.mark.parametrize("size", ["paper", "wide"])
@pytest.mark.parametrize("method", ["fused", "bound"])
def test_lrp_linear_vs_gemms(benchmark, size, method, dtype, device):
    """GEMM-bound: the forward z = x W^T and the K targets' R/stab(z) @ W. paper: the output layer of the captioner
    (N = B*T = 640 rows, 512 -> 10000 words, K = 1: a one-hot start, each word its own row); wide: K = 20 targets of
    a 4096 -> 4096 layer on N = 256 rows (a transformer MLP)."""
    _skip_unless_supported(device, dtype, size)
    rows, n_in, n_out, targets = (640, 512, 10000, 1) if size == "paper" else (256, 4096, 4096, 20)
    benchmark.group = f"bound linear-{size} {device} {_dtype_id(dtype)} K={targets} N={rows} {n_in}->{n_out}"
    _full_precision()
    x = _random(rows, n_in, dtype=dtype, device=device)
    weight = _random(n_out, n_in, dtype=dtype, device=device, seed=1) / n_in ** 0.5
    relevance = _random(targets, rows, n_out, dtype=dtype, device=device, seed=2)
    if method == "fused":
        run = lambda: ops.lrp_linear(x, weight, None, relevance)  # noqa: E731
    else:
        flat_relevance = relevance.view(targets * rows, n_out)
        run = lambda: (x @ weight.t(), flat_relevance @ weight)  # noqa: E731
    _timed(benchmark, run, device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=_dtype_id)
@pytest.mark.parametrize("method", ["fused", "bound"])
def test_lrp_lstm_vs_gemms(benchmark, method, dtype, device):
    """The paper's language LSTM explained for every word: T = 20 steps, B = 32, D = 1024 (word + context), H = 512,
    K = 20 targets (word k has relevance at step k). GEMMs: the forward's input and recurrent projections and, per step,
    the active targets' ratio @ [W_ih_g | W_hh_g] (half of the K*T slot-steps are active)."""
    _skip_unless_supported(device, dtype, "lstm")
    steps, batch, n_in, hidden, targets = 20, 32, 1024, 512, 20
    benchmark.group = f"bound lstm {device} {_dtype_id(dtype)} K={targets} T={steps} B={batch} D={n_in} H={hidden}"
    _full_precision()
    x = _random(steps, batch, n_in, dtype=dtype, device=device)
    h0 = torch.zeros(batch, hidden, dtype=dtype, device=device)
    weight_ih = _random(4 * hidden, n_in, dtype=dtype, device=device, seed=1) / n_in ** 0.5
    weight_hh = _random(4 * hidden, hidden, dtype=dtype, device=device, seed=2) / hidden ** 0.5
    relevance = _random(targets, steps, batch, hidden, dtype=dtype, device=device, seed=3)
    relevance = relevance * torch.eye(steps, device=device, dtype=dtype)[:, :, None, None]
    if method == "fused":
        run = lambda: ops.lrp_lstm(x, h0, h0, weight_ih, weight_hh, None, None, relevance)  # noqa: E731
    else:
        flat_x = x.view(steps * batch, n_in)
        w_g = torch.cat([weight_ih[2 * hidden:3 * hidden], weight_hh[2 * hidden:3 * hidden]], 1)
        state = torch.zeros(batch, hidden, device=device, dtype=dtype)
        ratio = torch.zeros(targets * batch, hidden, device=device, dtype=dtype)

        def run():
            flat_x @ weight_ih.t()
            for _ in range(steps):
                state @ weight_hh.t()
            for t in range(steps):  # targets active at step t: those with last step >= t
                ratio[:(targets - t) * batch] @ w_g
    _timed(benchmark, run, device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=_dtype_id)
@pytest.mark.parametrize("size", list(SDPA_SIZES))
@pytest.mark.parametrize("mode", ["constant", "attnlrp"])
@pytest.mark.parametrize("method", ["fused", "gemm_formulation", "fused_value_pass", "bound"])
def test_lrp_sdpa_vs_gemms(benchmark, size, mode, method, dtype, device, monkeypatch):
    """The op as it chooses ("fused": CAPXAI_SDPA_VALUE_PASS=auto), each formulation of relevance_v forced, and the
    op's GEMMs alone: forward q k^T and A v, relevance A^T @ ratio with the K targets as columns (constant); attnlrp
    adds ratio @ v^T, score_ratio @ k and score_ratio^T @ q."""
    _skip_unless_supported(device, dtype, size)
    s = SDPA_SIZES[size]
    if device == "cpu" and method == "fused_value_pass" and s["queries"] >= 512 and mode == "attnlrp":
        pytest.skip("the fused pass at self-attention sizes takes minutes on 2 CPU cores")
    benchmark.group = (f"bound sdpa-{mode} {size} {device} {_dtype_id(dtype)} K={s['targets']} B={s['batch']} "
                       f"h={s['heads']}x{s['dim']} Lq={s['queries']} Lk={s['keys']}")
    _full_precision()
    shape = (s["batch"], s["heads"])
    q = _random(*shape, s["queries"], s["dim"], dtype=dtype, device=device)
    k = _random(*shape, s["keys"], s["dim"], dtype=dtype, device=device, seed=1)
    v = _random(*shape, s["keys"], s["dim"], dtype=dtype, device=device, seed=2)
    relevance = _random(s["targets"], *shape, s["queries"], s["dim"], dtype=dtype, device=device, seed=3)
    if method != "bound":
        choice = {"fused": "auto", "gemm_formulation": "gemm", "fused_value_pass": "fused"}[method]
        monkeypatch.setenv("CAPXAI_SDPA_VALUE_PASS", choice)
        run = lambda: ops.lrp_sdpa(q, k, v, relevance, mode=mode)  # noqa: E731
    else:
        columns = relevance.permute(1, 2, 3, 0, 4).reshape(*shape, s["queries"], -1)

        def run():
            weights = q @ k.transpose(-2, -1)
            weights @ v
            weights.transpose(-2, -1) @ columns
            if mode == "attnlrp":
                scores = columns[..., :s["dim"]] @ v.transpose(-2, -1)
                scores @ k
                scores.transpose(-2, -1) @ q
    _timed(benchmark, run, device)
