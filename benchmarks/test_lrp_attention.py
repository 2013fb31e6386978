"""Attention ops at the paper captioner's sizes: B = 32 captions, K = T = 20 targets (one per word), N = 196 regions
(+ 1 visual sentinel) of D = 512 for additive attention; 8 heads of 64, Lq = 20 queries (the words), Lk = 196 keys
(the regions) for scaled dot-product attention. float32.

(a) fused: the op. (b) reference: the eager pure-PyTorch reference. (c) autograd: plain input gradient of the same
K targets through the same attention (weights detached: what LRP's "constant" rule corresponds to), times the input.
write_output: allocating and writing a tensor of the output's size once: the floor for a memory-bound op.
Run: ``make bench`` or ``pytest benchmarks/test_lrp_attention.py --benchmark-only``.
"""
import pytest
import torch

from capxai.ops import lrp_additive_attention, lrp_sdpa
from capxai.ops.reference import lrp_additive_attention_reference, lrp_sdpa_reference

BATCH, TARGETS = 32, 20
REGIONS, FEATURES = 196 + 1, 512
HEADS, HEAD_DIM, QUERIES, KEYS = 8, 64, 20, 196
DEVICES = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])


def _additive_inputs(device):
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(BATCH, REGIONS, FEATURES, generator=generator)
    weights = torch.softmax(torch.randn(BATCH, REGIONS, generator=generator), -1)
    relevance = torch.randn(TARGETS, BATCH, FEATURES, generator=generator)
    return values.to(device), weights.to(device), relevance.to(device)


def _sdpa_inputs(device):
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(BATCH, HEADS, QUERIES, HEAD_DIM, generator=generator)
    k = torch.randn(BATCH, HEADS, KEYS, HEAD_DIM, generator=generator)
    v = torch.randn(BATCH, HEADS, KEYS, HEAD_DIM, generator=generator)
    relevance = torch.randn(TARGETS, BATCH, HEADS, QUERIES, HEAD_DIM, generator=generator)
    return q.to(device), k.to(device), v.to(device), relevance.to(device)


def _synchronized(function, device):
    if device.type != "cuda":
        return function
    return lambda: (function(), torch.cuda.synchronize())[0]


def _additive_runner(method, values, weights, relevance):
    if method == "fused":
        return lambda: lrp_additive_attention(values, weights, relevance)
    if method == "reference":
        return lambda: lrp_additive_attention_reference(values, weights, relevance)
    if method == "autograd":
        def input_times_gradient():
            leaf = values.detach().requires_grad_(True)
            context = torch.bmm(weights.unsqueeze(1), leaf).squeeze(1)
            (gradient,) = torch.autograd.grad(context, leaf, relevance, is_grads_batched=True)
            return leaf.detach() * gradient
        return input_times_gradient
    if method == "write_output":
        return lambda: torch.empty(TARGETS, *values.shape, device=values.device).fill_(1.0)
    raise ValueError(method)


def _sdpa_runner(method, q, k, v, relevance):
    if method == "fused":
        return lambda: lrp_sdpa(q, k, v, relevance)
    if method == "fused_attnlrp":
        return lambda: lrp_sdpa(q, k, v, relevance, mode="attnlrp")
    if method == "reference":
        return lambda: lrp_sdpa_reference(q, k, v, relevance)
    if method == "autograd":
        def input_times_gradient():
            leaf = v.detach().requires_grad_(True)
            weights = torch.softmax(q @ k.transpose(-2, -1) / HEAD_DIM**0.5, -1)
            (gradient,) = torch.autograd.grad(weights @ leaf, leaf, relevance, is_grads_batched=True)
            return leaf.detach() * gradient
        return input_times_gradient
    if method == "write_output":
        return lambda: torch.empty(TARGETS, *v.shape, device=v.device).fill_(1.0)
    raise ValueError(method)


@pytest.mark.parametrize("device", DEVICES, ids=str)
@pytest.mark.parametrize("method", ["fused", "reference", "autograd", "write_output"])
def test_lrp_additive_attention(benchmark, method, device):
    benchmark.group = f"lrp_additive_attention {device.type} K={TARGETS} B={BATCH} N={REGIONS} D={FEATURES}"
    run = _synchronized(_additive_runner(method, *_additive_inputs(device)), device)
    result = benchmark.pedantic(run, rounds=5, warmup_rounds=1)
    assert result.shape == (TARGETS, BATCH, REGIONS, FEATURES)


@pytest.mark.parametrize("device", DEVICES, ids=str)
@pytest.mark.parametrize("method", ["fused", "fused_attnlrp", "reference", "autograd", "write_output"])
def test_lrp_sdpa(benchmark, method, device):
    benchmark.group = f"lrp_sdpa {device.type} K={TARGETS} B={BATCH} h={HEADS}x{HEAD_DIM} Lq={QUERIES} Lk={KEYS}"
    run = _synchronized(_sdpa_runner(method, *_sdpa_inputs(device)), device)
    result = benchmark.pedantic(run, rounds=5, warmup_rounds=1)
    result = result[-1] if isinstance(result, tuple) else result
    assert result.shape == (TARGETS, BATCH, HEADS, KEYS, HEAD_DIM)
