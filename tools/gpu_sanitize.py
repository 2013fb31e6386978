"""Calls every capxai op on CUDA at odd shapes, for ``compute-sanitizer`` (memcheck, racecheck) to watch.

Shapes are odd on purpose (not multiples of a warp, a block or a vector width), with K targets, masks of both kinds
and both SDPA modes, so that out-of-bounds reads, writes and races at the edges of the launch grids show. Every CUDA
result is also checked against the op's CPU kernel (verified against the references): in float64 they agree to
1e-9 of the result's scale; in float32 the CUDA result's error against the float64 CPU result is at most
``FLOAT32_SLACK`` times the float32 CPU kernel's own error (summation order differs, the accuracy must not); in
float16 / bfloat16 (computed in float32 on both devices, rounded once) at most twice the larger of the CPU kernel's
error and one rounding. Both formulations of lrp_sdpa's relevance_v run (fused pass, GEMMs). The script exits 1 if
any call disagrees, so a run under the sanitizer checks values too.

    compute-sanitizer --tool memcheck python tools/gpu_sanitize.py
"""
import functools
import itertools
import os
import sys

import torch

import capxai
from capxai import ops
from capxai.ops.attention import SDPA_MODES

FLOAT64_TOLERANCE = 1e-9
FLOAT32_SLACK = 4.0
HALF_ROUNDING = {torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11}  # one rounding, relative to the scale


def _tuple(result):
    return result if isinstance(result, tuple) else (result,)


def _max_error(actual, expected):
    return (actual.double() - expected).abs().max().item() if expected.numel() else 0.0


def agrees(name, cuda_result, cpu_result, exact_result):
    """CUDA vs CPU kernel; ``exact_result`` is the CPU kernel on float64 copies of the inputs."""
    for index, (cuda, cpu, exact) in enumerate(zip(_tuple(cuda_result), _tuple(cpu_result), _tuple(exact_result))):
        cuda = cuda.cpu()
        scale = exact.abs().max().item() if exact.numel() else 0.0
        if not torch.isfinite(cuda).all():
            print(f"MISMATCH {name} output {index}: non-finite values")
            return False
        if cuda.dtype == torch.float64:
            error, allowed = _max_error(cuda, cpu), FLOAT64_TOLERANCE * scale
        elif cuda.dtype in HALF_ROUNDING:  # float32 inside on both devices, rounded once: a rounding may differ
            error = _max_error(cuda, exact)
            allowed = 2 * max(_max_error(cpu, exact), HALF_ROUNDING[cuda.dtype] * scale)
        else:
            error, allowed = _max_error(cuda, exact), FLOAT32_SLACK * _max_error(cpu, exact) + 1e-6 * scale
        if error > allowed:
            print(f"MISMATCH {name} output {index}: error {error:.3g} > allowed {allowed:.3g} (scale {scale:.3g})")
            return False
    return True


def run_everywhere(function, *tensors):
    """``function`` on CUDA copies, on the CPU tensors, and on float64 CPU copies (None stays None)."""
    def moved(convert):
        return [convert(t) if isinstance(t, torch.Tensor) else t for t in tensors]
    return (function(*moved(lambda t: t.cuda())), function(*tensors),
            function(*moved(lambda t: t.double() if t.is_floating_point() else t)))


def cases(dtype, generator):
    def randn(*shape):
        return torch.randn(*shape, dtype=dtype, generator=generator)

    for n, n_in, n_out, k in [(1, 1, 1, 0), (3, 7, 5, 0), (37, 129, 33, 3), (5, 1031, 257, 2)]:
        relevance = randn(k, n, n_out) if k else randn(n, n_out)
        for bias_factor in (0.0, 1.0):
            yield (f"lrp_linear N={n} In={n_in} Out={n_out} K={k} bias_factor={bias_factor}",
                   lambda x, w, b, r, bf=bias_factor: ops.lrp_linear(x, w, b, r, 0.01, bf),
                   (randn(n, n_in), randn(n_out, n_in), randn(n_out), relevance))
    for steps, batch, d, hidden, k in [(1, 1, 1, 1, 0), (5, 3, 7, 9, 0), (11, 5, 33, 65, 4), (3, 2, 129, 257, 2)]:
        relevance_h = randn(k, steps, batch, hidden) if k else randn(steps, batch, hidden)
        relevance_c = randn(*relevance_h.shape)
        yield (f"lrp_lstm T={steps} B={batch} D={d} H={hidden} K={k}",
               lambda *a: ops.lrp_lstm(*a, 0.01, 1.0),
               (randn(steps, batch, d), randn(batch, hidden), randn(batch, hidden), randn(4 * hidden, d),
                randn(4 * hidden, hidden), randn(4 * hidden), None, relevance_h, relevance_c))
        yield (f"lrp_lstm_cell B={batch} D={d} H={hidden} K={k}",
               lambda *a: ops.lrp_lstm_cell(*a, 0.01, 0.0),
               (randn(batch, d), randn(batch, hidden), randn(batch, hidden), randn(4 * hidden, d),
                randn(4 * hidden, hidden), None, randn(4 * hidden), relevance_h[..., 0, :, :], None))
    for batch, n, d, k in [(1, 1, 1, 0), (3, 50, 7, 0), (5, 197, 513, 3)]:
        weights = torch.softmax(randn(batch, n), dim=-1)
        yield (f"lrp_additive_attention B={batch} N={n} D={d} K={k}",
               lambda v, w, r: ops.lrp_additive_attention(v, w, r, 0.01, 0.5),
               (randn(batch, n, d), weights, randn(k, batch, d) if k else randn(batch, d)))
    for batch, heads, lq, lk, d, dv, k in [(1, 1, 1, 1, 1, 1, 0), (2, 3, 5, 7, 9, 11, 0), (3, 5, 33, 65, 17, 31, 2),
                                           (1, 2, 129, 257, 64, 64, 1)]:
        q, key, v = randn(batch, heads, lq, d), randn(batch, heads, lk, d), randn(batch, heads, lk, dv)
        relevance = randn(k, batch, heads, lq, dv) if k else randn(batch, heads, lq, dv)
        bool_mask = torch.rand(lq, lk, generator=generator) > 0.3
        bool_mask[:, 0] = True  # every query attends somewhere
        float_mask = torch.where(bool_mask, 0.0, -1e4).to(dtype).expand(batch, 1, lq, lk)
        for mode, value_pass in itertools.product(SDPA_MODES, ("fused", "gemm")):
            for mask_name, mask in (("none", None), ("bool", bool_mask), ("float", float_mask)):
                yield (f"lrp_sdpa[{mode}, {value_pass}] B={batch} h={heads} Lq={lq} Lk={lk} d={d} dv={dv} K={k} "
                       f"mask={mask_name}", functools.partial(_sdpa, mode, value_pass), (q, key, v, relevance, mask))


def _sdpa(mode, value_pass, *arguments):
    os.environ["CAPXAI_SDPA_VALUE_PASS"] = value_pass  # both formulations of relevance_v (lrp_sdpa.h)
    return ops.lrp_sdpa(*arguments, mode=mode, eps=0.01, bias_factor=1.0)


def main():
    if not torch.cuda.is_available():
        print("gpu_sanitize: no CUDA GPU is visible", file=sys.stderr)
        return 2
    if not capxai.cuda_built():
        print("gpu_sanitize: capxai._C has no CUDA kernels (build with FORCE_CUDA=1)", file=sys.stderr)
        return 2
    generator = torch.Generator().manual_seed(0)
    count, failed = 0, 0
    for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        for name, function, inputs in cases(dtype, generator):
            results = run_everywhere(function, *inputs)
            torch.cuda.synchronize()
            count += 1
            failed += not agrees(f"{name} {dtype}", *results)
    print(f"gpu_sanitize: {count} calls, {count - failed} equal to the CPU kernels, {failed} mismatched")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
