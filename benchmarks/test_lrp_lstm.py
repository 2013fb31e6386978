"""lrp_lstm at the paper captioner's sizes: B = 32 captions, T = 20 steps, K = T targets (target k = the word of
step k, relevance injected at h_k), H = 512, D = 1536, float32.

(a) fused: the op. (b) reference: the eager pure-PyTorch reference, vectorised over K and B. (c) autograd: plain
input gradients for the same K targets through ``torch.nn.LSTM`` (parameters frozen), times the input.
(d) per_target: each target explained on its own, as the paper's code does per word: forward once, then a backward
loop from the target's step down to 0 with the reference step.
Run: ``make bench`` or ``pytest benchmarks/test_lrp_lstm.py --benchmark-only``.
"""
import pytest
import torch

from capxai.ops import lrp_lstm
from capxai.ops.reference import _lstm_forward, lrp_lstm_reference, lstm_backward_step, lstm_g_branch

STEPS, BATCH, N_IN, HIDDEN = 20, 32, 1536, 512
METHODS = ["fused", "reference", "autograd", "per_target"]


def _inputs(device):
    generator = torch.Generator().manual_seed(0)
    lstm = torch.nn.LSTM(N_IN, HIDDEN)
    for parameter in lstm.parameters():
        parameter.requires_grad_(False)
    x = torch.randn(STEPS, BATCH, N_IN, generator=generator)
    h0 = torch.zeros(BATCH, HIDDEN)
    c0 = torch.zeros(BATCH, HIDDEN)
    word_mask = torch.eye(STEPS)[:, :, None, None]
    relevance_h = torch.randn(STEPS, STEPS, BATCH, HIDDEN, generator=generator) * word_mask  # [K, T, B, H]
    return lstm.to(device), x.to(device), h0.to(device), c0.to(device), relevance_h.to(device)


def _weights(lstm):
    return lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0


def autograd_input_times_gradient(lstm, x, h0, c0, relevance_h):
    """Gradient x input for each target through torch.nn.LSTM: one forward, K backward passes."""
    x = x.detach().requires_grad_(True)
    output, _ = lstm(x, (h0[None], c0[None]))
    results = []
    for target_relevance in relevance_h:
        (gradient,) = torch.autograd.grad(output, x, target_relevance, retain_graph=True)
        results.append(x.detach() * gradient)
    return torch.stack(results)


def per_target_loop(lstm, x, h0, c0, relevance_h):
    """Each target on its own: forward once, then t = k .. 0 for target k (the paper's per-word loop)."""
    weights = _weights(lstm)
    steps = _lstm_forward(x, h0, c0, *weights)
    weight_g, bias_g = lstm_g_branch(*weights)
    results = torch.zeros(relevance_h.shape[0], *x.shape, dtype=x.dtype, device=x.device)
    zeros = torch.zeros_like(h0)
    for k, target_relevance in enumerate(relevance_h):
        carry_h, carry_c = zeros, zeros
        for t in range(k, -1, -1):
            results[k, t], carry_h, carry_c = lstm_backward_step(steps[t], x[t], target_relevance[t], zeros, carry_h,
                                                                 carry_c, weight_g, bias_g, 0.01, 0.0)
    return results


def _runner(method, lstm, x, h0, c0, relevance_h):
    if method == "fused":
        return lambda: lrp_lstm(x, h0, c0, *_weights(lstm), relevance_h)[0]
    if method == "reference":
        return lambda: lrp_lstm_reference(x, h0, c0, *_weights(lstm), relevance_h)[0]
    if method == "autograd":
        return lambda: autograd_input_times_gradient(lstm, x, h0, c0, relevance_h)
    if method == "per_target":
        return lambda: per_target_loop(lstm, x, h0, c0, relevance_h)
    raise ValueError(method)


DEVICES = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES, ids=str)
@pytest.mark.parametrize("method", METHODS)
def test_lrp_lstm(benchmark, method, device):
    benchmark.group = f"lrp_lstm {device.type} B={BATCH} T={STEPS} K={STEPS} H={HIDDEN} D={N_IN}"
    inputs = _inputs(device)
    run = _runner(method, *inputs)
    if device.type == "cuda":
        inner = run
        run = lambda: (inner(), torch.cuda.synchronize())[0]  # noqa: E731
    with torch.no_grad() if method != "autograd" else torch.enable_grad():
        result = benchmark.pedantic(run, rounds=5, warmup_rounds=1)
    assert result.shape == (STEPS, STEPS, BATCH, N_IN)


def test_per_target_loop_matches_the_op():
    """The comparator (d) computes the same thing as the op, so the timings compare like with like."""
    lstm, x, h0, c0, relevance_h = _inputs(torch.device("cpu"))
    x, relevance_h = x[:4, :3], relevance_h[:4, :4, :3]
    h0, c0 = h0[:3], c0[:3]
    with torch.no_grad():
        expected = lrp_lstm(x, h0, c0, *_weights(lstm), relevance_h)[0]
        torch.testing.assert_close(per_target_loop(lstm, x, h0, c0, relevance_h), expected, rtol=1e-4,
                                   atol=1e-4 * expected.abs().max().item())
