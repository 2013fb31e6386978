"""Precision of the ops (docs/LRP_RULES.md (Part 2), "Precision"): float16 / bfloat16 inputs against the float64
reference of the same (rounded) inputs within the stated tolerance, on the CPU and (marked) CUDA; torch.autocast
through the ops and the capxai.nn modules; immunity to TF32 / reduced-precision float32 GEMMs; bad mixes of dtypes."""

import pytest
import torch

import capxai
from capxai import ops
from capxai.ops import reference
from helpers import (assert_matches, make_additive_inputs, make_linear_inputs, make_lstm_inputs, make_mask,
                     make_sdpa_inputs)

# The stated tolerance (the addendum): |result - reference| <= TOL * (|reference| + max |reference|), reference in
# float64 on the same half-precision inputs. Two units of the final rounding (2^-8 bfloat16, 2^-11 float16): the
# kernels compute in float32 and round once, so the rounding of the result dominates.
TOLERANCE = {torch.bfloat16: 2 ** -7, torch.float16: 2 ** -10}
HALF = [pytest.param(torch.bfloat16, id="bfloat16"), pytest.param(torch.float16, id="float16")]


def _as(dtype, arguments):
    return {name: value.to(dtype) if isinstance(value, torch.Tensor) and value.is_floating_point() else value
            for name, value in arguments.items()}


def _linear(dtype, device, bias_factor):
    inputs = _as(dtype, make_linear_inputs(9, 33, 17, 3, torch.float32, device))
    return (ops.lrp_linear(**inputs, bias_factor=bias_factor),
            reference.lrp_linear_reference(**_as(torch.float64, inputs), bias_factor=bias_factor))


def _lstm(dtype, device, bias_factor):
    inputs = _as(dtype, make_lstm_inputs(6, 3, 10, 12, 2, torch.float32, device))
    return (ops.lrp_lstm(**inputs, bias_factor=bias_factor),
            reference.lrp_lstm_reference(**_as(torch.float64, inputs), bias_factor=bias_factor))


def _lstm_cell(dtype, device, bias_factor):
    inputs = make_lstm_inputs(1, 3, 10, 12, 2, torch.float32, device)
    inputs = _as(dtype, {"x": inputs["x"][0], "h_prev": inputs["h0"], "c_prev": inputs["c0"],
                         **{name: inputs[name] for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")},
                         "relevance_h": inputs["relevance_h"][:, 0], "relevance_c": inputs["relevance_c"][:, 0]})
    return (ops.lrp_lstm_cell(**inputs, bias_factor=bias_factor),
            reference.lrp_lstm_cell_reference(**_as(torch.float64, inputs), bias_factor=bias_factor))


def _additive(dtype, device, bias_factor):
    inputs = _as(dtype, make_additive_inputs(4, 50, 24, 3, torch.float32, device))
    return (ops.lrp_additive_attention(**inputs, bias_factor=bias_factor),
            reference.lrp_additive_attention_reference(**_as(torch.float64, inputs), bias_factor=bias_factor))


def _sdpa(mode, n_queries):
    def case(dtype, device, bias_factor):
        inputs = _as(dtype, make_sdpa_inputs(2, 3, n_queries, 40, 16, 16, 2, torch.float32, device))
        mask = make_mask("float", 2, 3, n_queries, 40, torch.float32, device).to(dtype)
        return (ops.lrp_sdpa(**inputs, attn_mask=mask, mode=mode, bias_factor=bias_factor),
                reference.lrp_sdpa_reference(**_as(torch.float64, inputs), attn_mask=mask.double(), mode=mode,
                                             bias_factor=bias_factor))
    return case


CASES = {"lrp_linear": _linear, "lrp_lstm": _lstm, "lrp_lstm_cell": _lstm_cell, "lrp_additive_attention": _additive,
         "lrp_sdpa-fused": _sdpa("constant", 9), "lrp_sdpa-gemm": _sdpa("constant", 70),
         "lrp_sdpa_attnlrp-fused": _sdpa("attnlrp", 9), "lrp_sdpa_attnlrp-gemm": _sdpa("attnlrp", 70)}


def _pairs(result, expected):
    return zip(*(((result,), (expected,)) if isinstance(result, torch.Tensor) else (result, expected)))


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("half", HALF)
@pytest.mark.parametrize("bias_factor", [0.0, 1.0], ids=["bf0", "bf1"])
def test_half_precision_matches_float64_reference(case, half, bias_factor, device):
    result, expected = CASES[case](half, device, bias_factor)
    for got, want in _pairs(result, expected):
        assert got.dtype == half and got.device == want.device
        assert_matches(got.double(), want, rtol=TOLERANCE[half])


ROUNDED_ONCE = {
    "lrp_sdpa_attnlrp": (lambda: make_sdpa_inputs(2, 2, 70, 30, 8, 8, 3, torch.float32, "cpu"),
                         lambda **inputs: ops.lrp_sdpa(**inputs, mode="attnlrp")),
    # the CPU kernel stores each element rounded in its own pass (csrc/common/cpu_round.h), not through a float32 copy
    "lrp_additive_attention": (lambda: make_additive_inputs(3, 19, 37, 4, torch.float32, "cpu"),
                               lambda **inputs: ops.lrp_additive_attention(**inputs, bias_factor=1.0)),
    "lrp_linear": (lambda: make_linear_inputs(9, 33, 17, 3, torch.float32, "cpu"), ops.lrp_linear),
}


@pytest.mark.parametrize("case", ROUNDED_ONCE)
@pytest.mark.parametrize("half", HALF)
def test_half_precision_is_float32_rounded_once(case, half, device):
    """The half-precision result is the float32 computation on the same inputs, rounded once (nothing else): bitwise
    torch's own round-to-nearest-even of the float32 result."""
    make, call = ROUNDED_ONCE[case]
    inputs = _as(half, {name: value.to(device) if isinstance(value, torch.Tensor) else value
                        for name, value in make().items()})
    result, full = call(**inputs), call(**_as(torch.float32, inputs))
    for got, want in _pairs(result, full):
        assert torch.equal(got, want.to(half))


def test_float16_overflow_is_named(device):
    # z = 300 - 300 = 0 -> stab(z) = eps; R_x = 300 * 1 * 100 / 0.01 = 3e6, beyond float16's 65504.
    x = torch.tensor([[300.0]], dtype=torch.float16, device=device)
    weight = torch.ones(1, 1, dtype=torch.float16, device=device)
    bias = torch.tensor([-300.0], dtype=torch.float16, device=device)
    relevance = torch.tensor([[100.0]], dtype=torch.float16, device=device)
    with pytest.raises(ValueError, match="overflowed Half .largest value 65504."):
        ops.lrp_linear(x, weight, bias, relevance)
    assert torch.isfinite(ops.lrp_linear(x.bfloat16(), weight.bfloat16(), bias.bfloat16(), relevance.bfloat16())).all()


@pytest.mark.parametrize("call,message", [
    (lambda d: ops.lrp_linear(torch.ones(2, 3, dtype=torch.float16, device=d), torch.ones(4, 3, device=d), None,
                              torch.ones(2, 4, dtype=torch.float16, device=d)), "weight must have the dtype of x"),
    (lambda d: ops.lrp_additive_attention(torch.ones(2, 3, 4, dtype=torch.bfloat16, device=d),
                                          torch.ones(2, 3, dtype=torch.float16, device=d),
                                          torch.ones(2, 4, dtype=torch.bfloat16, device=d)),
     "weights must have the dtype of values"),
    (lambda d: ops.lrp_sdpa(*(torch.ones(1, 1, 2, 4, dtype=torch.float16, device=d),) * 4,
                            attn_mask=torch.zeros(2, 2, device=d)),
     "attn_mask must be bool .True = attend. or the dtype"),
    (lambda d: ops.lrp_lstm(torch.ones(2, 1, 3, dtype=torch.bfloat16, device=d),
                            *(torch.zeros(1, 2, dtype=torch.bfloat16, device=d),) * 2,
                            torch.ones(8, 3, dtype=torch.bfloat16, device=d), torch.ones(8, 2, device=d), None, None,
                            torch.ones(2, 1, 2, dtype=torch.bfloat16, device=d)), "weight_hh must have the dtype of x"),
], ids=["linear half x float weight", "additive bf16 values fp16 weights", "sdpa half q float32 mask",
        "lstm bf16 x float32 weight_hh"])
def test_mixed_dtypes_are_refused(call, message, device):
    with pytest.raises(TypeError, match=message):
        call(device)


# -- autocast -----------------------------------------------------------------------------------------------------
AUTOCAST = [pytest.param("cpu", torch.bfloat16, id="cpu-bfloat16"),
            pytest.param("cuda", torch.float16, id="cuda-float16", marks=[
                pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU present")]),
            pytest.param("cuda", torch.bfloat16, id="cuda-bfloat16", marks=[
                pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU present")])]


@pytest.mark.parametrize("device_type,autocast_dtype", AUTOCAST)
def test_ops_under_autocast_promote_mixed_inputs(device_type, autocast_dtype):
    """Autocast hands an op a half-precision activation beside float32 weights: it runs in the widest dtype."""
    inputs = make_linear_inputs(5, 7, 6, 2, torch.float32, device_type)
    mixed = {**inputs, "x": inputs["x"].to(autocast_dtype)}
    with torch.autocast(device_type, dtype=autocast_dtype):
        result = ops.lrp_linear(**mixed)
    assert result.dtype == torch.float32
    assert torch.equal(result, ops.lrp_linear(**{**inputs, "x": mixed["x"].float()}))
    with pytest.raises(TypeError, match="weight must have the dtype of x"):  # outside autocast: refused
        ops.lrp_linear(**mixed)


def _modules(device):
    torch.manual_seed(0)
    return (capxai.nn.LSTM(12, 16).to(device), capxai.nn.MultiheadAttention(16, 4).to(device),
            capxai.nn.AdditiveAttention(16, 16, 8).to(device))


def _explain(modules, x):
    """LSTM -> self-attention -> additive attention over its outputs; the pixels' analogue here is x."""
    lstm, attention, additive = modules
    x = x.clone().requires_grad_(True)
    with capxai.lrp():
        hidden, _ = lstm(x)
        attended, _ = attention(hidden, hidden, hidden)
        context, _, _ = additive(attended.transpose(0, 1), hidden[-1])
        (relevance,) = torch.autograd.grad(context, x, context.detach().float())
    return relevance


@pytest.mark.parametrize("device_type,autocast_dtype", AUTOCAST)
def test_capxai_nn_under_autocast(device_type, autocast_dtype):
    """capxai.nn modules explain under autocast: finite, and the relevance of the half-precision forward is close to
    the float32 one (they differ by the forward's rounding, not by the rule)."""
    modules = _modules(device_type)
    x = torch.randn(7, 3, 12, generator=torch.Generator().manual_seed(1)).to(device_type)
    expected = _explain(modules, x)
    with torch.autocast(device_type, dtype=autocast_dtype):
        relevance = _explain(modules, x)
    assert relevance.dtype == torch.float32 and torch.isfinite(relevance).all()
    error = (relevance - expected).abs().max() / expected.abs().max()
    correlation = torch.corrcoef(torch.stack([relevance.flatten(), expected.flatten()]))[0, 1]
    assert error < 0.05 and correlation > 0.995, (error.item(), correlation.item())


# -- TF32 / reduced-precision float32 GEMMs -----------------------------------------------------------------------
def _float32_results(device):
    results = []
    for case in CASES.values():
        result, _ = case(torch.float32, device, 0.5)
        results += [result] if isinstance(result, torch.Tensor) else list(result)
    return results


def test_ops_are_immune_to_reduced_precision_float32_matmul_on_cpu():
    """set_float32_matmul_precision("medium") lets oneDNN compute float32 GEMMs in bfloat16 where the CPU has it (this
    project's machines do): the ops' results stay bitwise the same, and the user's setting is back afterwards."""
    before = _float32_results("cpu")
    previous = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        mkldnn = torch.backends.mkldnn.matmul.fp32_precision
        after = _float32_results("cpu")
        assert torch.backends.mkldnn.matmul.fp32_precision == mkldnn
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision(previous)
    for got, want in zip(after, before):
        assert torch.equal(got, want)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU present")
@pytest.mark.parametrize("case", CASES)
def test_ops_are_immune_to_tf32_on_cuda(case):
    """Bitwise the same with TF32 on, per op. lrp_linear, lrp_lstm and its cell once computed z with a 1-D bias
    through at::linear / at::addmm, whose cuBLASLt bias epilogue reads the global TF32 setting and not the guard
    (issue 36): their forward values changed under TF32 while every other GEMM kept full precision."""
    def results():
        result, _ = CASES[case](torch.float32, "cuda", 0.5)
        return [result] if isinstance(result, torch.Tensor) else list(result)

    before = results()
    a = torch.randn(512, 512, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    plain = a @ a
    previous = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = True
        tf32_is_active = not torch.equal(a @ a, plain)  # a GPU without TF32 leaves the product alone
        after = results()
        assert torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    assert tf32_is_active, "TF32 did not change a plain float32 matmul on this GPU: the test would prove nothing"
    for got, want in zip(after, before):
        assert torch.equal(got, want)
