"""lrp_linear: fused op vs the pure-PyTorch reference vs a plain autograd ``x * grad`` pass, same shapes.

Shapes of the paper's captioner: N = 32 captions x 20 steps = 640 rows, In = 1536, Out = 512 (a hidden layer) or
10000 (the vocabulary), K = 1 or 20 targets. ``gemm`` is the one matrix product the rule cannot avoid
(``[K*N, Out] @ [Out, In]``): a lower bound, to show what the fused op adds on top of it.
Run: ``make bench`` (or ``pytest benchmarks/test_lrp_linear.py --benchmark-only``).
"""
import pytest
import torch
import torch.nn.functional as F

from capxai.ops import lrp_linear
from capxai.ops.reference import lrp_linear_reference

N_ROWS, N_IN = 32 * 20, 1536
METHODS = ["fused", "reference", "autograd", "gemm"]


def _inputs(n_out, n_targets, device):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(N_ROWS, N_IN, generator=generator).to(device)
    weight = (torch.randn(n_out, N_IN, generator=generator) / N_IN**0.5).to(device)
    bias = torch.randn(n_out, generator=generator).to(device)
    relevance = torch.randn(n_targets, N_ROWS, n_out, generator=generator).to(device)
    return x, weight, bias, relevance


def _runner(method, x, weight, bias, relevance):
    if method == "fused":
        return lambda: lrp_linear(x, weight, bias, relevance)
    if method == "reference":
        return lambda: lrp_linear_reference(x, weight, bias, relevance)
    if method == "autograd":
        # The gradient of the same layer for the same K targets (grad_outputs = relevance), times the input.
        def input_times_gradient():
            leaf = x.detach().requires_grad_(True)
            output = F.linear(leaf, weight, bias)
            (gradient,) = torch.autograd.grad(output, leaf, relevance if relevance.shape[0] > 1 else relevance[0],
                                              is_grads_batched=relevance.shape[0] > 1)
            return leaf.detach() * gradient
        return input_times_gradient
    if method == "gemm":
        rows = relevance.reshape(-1, relevance.shape[-1])
        return lambda: rows @ weight
    raise ValueError(method)


def _synchronized(function, device):
    if device.type != "cuda":
        return function

    def run():
        result = function()
        torch.cuda.synchronize()
        return result
    return run


DEVICES = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES, ids=str)
@pytest.mark.parametrize("n_out", [512, 10000])
@pytest.mark.parametrize("n_targets", [1, 20])
@pytest.mark.parametrize("method", METHODS)
def test_lrp_linear(benchmark, method, n_targets, n_out, device):
    benchmark.group = f"lrp_linear {device.type} Out={n_out} K={n_targets}"
    inputs = _inputs(n_out, n_targets, device)
    run = _synchronized(_runner(method, *inputs), device)
    rounds = 3 if n_out * n_targets >= 200000 else 10
    result = benchmark.pedantic(run, rounds=rounds, warmup_rounds=1)
    assert result.shape[-1] == N_IN
