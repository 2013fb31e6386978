"""lrp_additive_attention and lrp_sdpa (both modes): kernels vs reference, docs/LRP_RULES.md properties, masks, opcheck,
torch.compile, bad input."""
import math

import pytest
import torch

from capxai.ops import lrp_additive_attention, lrp_sdpa
from capxai.ops.reference import (bilinear_score_rule, lrp_additive_attention_reference, lrp_sdpa_reference,
                                  sdpa_forward_reference, sdpa_value_rule, softmax_rule)
from helpers import assert_matches, make_additive_inputs, make_mask, make_sdpa_inputs


# -- additive attention -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("batch,n_values,dim,n_targets", [
    (1, 1, 1, None), (3, 197, 13, 1), (1100, 5, 3, None), (4, 50, 64, 25), (2, 7, 130, 3),
    (2, 197, 512, 20)])  # the last: many row tiles of the CPU kernel
@pytest.mark.parametrize("bias_factor", [0.0, 1.0], ids=["bf0", "bf1"])
def test_additive_kernel_matches_reference(batch, n_values, dim, n_targets, bias_factor, device, dtype):
    inputs = make_additive_inputs(batch, n_values, dim, n_targets, dtype, device)
    assert_matches(lrp_additive_attention(**inputs, bias_factor=bias_factor),
                   lrp_additive_attention_reference(**inputs, bias_factor=bias_factor))


def test_additive_sentinel_is_one_more_value(device):
    # Lu et al.: c_hat = beta s + (1 - beta) sum_k alpha_k V_k == attention over [V; s] with weights [(1-b) a; b].
    inputs = make_additive_inputs(4, 9, 6, 3, torch.float64, device, seed=1)
    sentinel = torch.randn(4, 1, 6, dtype=torch.float64, device=device)
    beta = torch.rand(4, 1, dtype=torch.float64, device=device)
    values = torch.cat([inputs["values"], sentinel], 1)
    weights = torch.cat([(1 - beta) * inputs["weights"], beta], 1)
    result = lrp_additive_attention(values, weights, inputs["relevance"], bias_factor=1.0)
    assert result.shape == (3, 4, 10, 6)
    assert_matches(result, lrp_additive_attention_reference(values, weights, inputs["relevance"], bias_factor=1.0))
    torch.testing.assert_close(result.sum((2, 3)), inputs["relevance"].sum(-1))


def test_additive_zero_context_uses_plus_eps(device, dtype):
    inputs = make_additive_inputs(3, 4, 5, 2, dtype, device, seed=2)
    inputs["values"][0] = 0.0  # context 0 -> stab = +eps
    result = lrp_additive_attention(**inputs, bias_factor=1.0)
    assert_matches(result, lrp_additive_attention_reference(**inputs, bias_factor=1.0))
    expected_share = (inputs["relevance"][:, 0] / 0.01 * 0.01 / 4).unsqueeze(1).expand(-1, 4, -1)
    assert_matches(result[:, 0], expected_share)


def test_additive_conservation_and_targets(device):
    inputs = make_additive_inputs(5, 11, 7, 4, torch.float64, device, seed=3)
    result = lrp_additive_attention(**inputs, bias_factor=1.0)
    relative = (result.sum((1, 2, 3)) - inputs["relevance"].sum((1, 2))).abs() / inputs["relevance"].sum((1, 2)).abs()
    assert relative.max().item() < 1e-6
    for k in range(4):
        assert_matches(lrp_additive_attention(inputs["values"], inputs["weights"], inputs["relevance"][k],
                                              bias_factor=1.0), result[k])


def test_additive_gradient_times_input_identity(device):
    inputs = make_additive_inputs(3, 6, 4, None, torch.float64, device, seed=4)
    values = inputs["values"].clone().requires_grad_(True)
    context = (inputs["weights"].unsqueeze(-1) * values).sum(1)
    (gradient,) = torch.autograd.grad(context.sum(), values)
    relevance = lrp_additive_attention(inputs["values"], inputs["weights"], context.detach(), eps=1e-12)
    assert_matches(relevance, inputs["values"] * gradient, rtol=1e-7)


# -- scaled dot-product attention -----------------------------------------------------------------------------------
SDPA_SHAPES = [  # (B, h, Lq, Lk, d, dv, K)
    (1, 1, 1, 1, 1, 1, None), (2, 3, 5, 7, 4, 6, 1), (1100, 1, 2, 3, 2, 2, None), (2, 8, 20, 49, 16, 16, 25),
    (3, 2, 9, 33, 65, 17, 3),
]


@pytest.fixture(params=["fused", "gemm"])
def value_pass(request, monkeypatch):
    """Both formulations of relevance_v (lrp_sdpa.h): the fused pass and the GEMM formulation."""
    monkeypatch.setenv("CAPXAI_SDPA_VALUE_PASS", request.param)
    return request.param


@pytest.mark.parametrize("shape", SDPA_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("mask", [None, "bool", "float", "causal"])
@pytest.mark.parametrize("mode", ["constant", "attnlrp"])
@pytest.mark.parametrize("bias_factor", [0.0, 1.0], ids=["bf0", "bf1"])
def test_sdpa_kernel_matches_reference(shape, mask, mode, bias_factor, device, dtype, value_pass):
    batch, heads, n_queries, n_keys, dim, dim_v, n_targets = shape
    inputs = make_sdpa_inputs(*shape, dtype, device)
    attn_mask = make_mask(mask, batch, heads, n_queries, n_keys, dtype, device)
    result = lrp_sdpa(**inputs, attn_mask=attn_mask, mode=mode, bias_factor=bias_factor)
    expected = lrp_sdpa_reference(**inputs, attn_mask=attn_mask, mode=mode, bias_factor=bias_factor)
    for got, want in zip(*(((result,), (expected,)) if mode == "constant" else (result, expected))):
        assert_matches(got, want)


def test_sdpa_reference_forward_is_torch_sdpa():
    inputs = make_sdpa_inputs(2, 3, 5, 7, 4, 6, None, torch.float64, "cpu", seed=5)
    for kind in (None, "bool", "float"):
        mask = make_mask(kind, 2, 3, 5, 7, torch.float64, "cpu")
        *_, output, _, _ = sdpa_forward_reference(inputs["q"], inputs["k"], inputs["v"], mask)
        expected = torch.nn.functional.scaled_dot_product_attention(inputs["q"], inputs["k"], inputs["v"], mask)
        torch.testing.assert_close(output, expected)


@pytest.mark.parametrize("mask", [None, "bool", "float"])
def test_sdpa_masked_keys_get_zero(mask, device, value_pass):
    inputs = make_sdpa_inputs(2, 2, 4, 6, 3, 5, 2, torch.float64, device, seed=6)
    attn_mask = make_mask(mask or "bool", 2, 2, 4, 6, torch.float64, device)
    key_never_allowed = torch.zeros(2, 1, 4, 6, dtype=torch.bool, device=device)
    key_never_allowed[..., 3] = True
    if attn_mask.dtype == torch.bool:
        attn_mask = attn_mask & ~key_never_allowed
    else:
        attn_mask = attn_mask.masked_fill(key_never_allowed, -math.inf)
    for mode in ("constant", "attnlrp"):
        result = lrp_sdpa(**inputs, attn_mask=attn_mask, mode=mode, bias_factor=1.0)
        relevance_v = result if mode == "constant" else result[2]
        assert torch.all(relevance_v[:, :, :, 3] == 0)
        if mode == "attnlrp":
            assert torch.all(result[1][:, :, :, 3] == 0)  # relevance_k of the masked key


def test_sdpa_query_without_keys_is_absorbed(device, value_pass):
    inputs = make_sdpa_inputs(1, 1, 3, 4, 2, 2, None, torch.float64, device, seed=7)
    attn_mask = torch.ones(3, 4, dtype=torch.bool, device=device)
    attn_mask[1] = False  # query 1 sees nothing
    result = lrp_sdpa(**inputs, attn_mask=attn_mask, mode="attnlrp", bias_factor=1.0)
    assert all(torch.isfinite(r).all() for r in result)
    assert torch.all(result[0][0, 0, 1] == 0)  # its own q gets nothing
    for got, want in zip(result, lrp_sdpa_reference(**inputs, attn_mask=attn_mask, mode="attnlrp", bias_factor=1.0)):
        assert_matches(got, want)


@pytest.mark.parametrize("mask", [None, "bool", "float"])
def test_sdpa_constant_conservation(mask, device, value_pass):
    inputs = make_sdpa_inputs(2, 3, 4, 6, 5, 7, 3, torch.float64, device, seed=8)
    attn_mask = make_mask(mask, 2, 3, 4, 6, torch.float64, device)
    relevance_v = lrp_sdpa(**inputs, attn_mask=attn_mask, bias_factor=1.0)
    total = inputs["relevance"].sum((1, 2, 3, 4))
    assert ((relevance_v.sum((1, 2, 3, 4)) - total).abs() / total.abs()).max().item() < 1e-6


@pytest.mark.parametrize("mask", [None, "float"])
def test_sdpa_attnlrp_stages_conserve(mask, device):
    # The softmax rule is not conservative by nature (AttnLRP); each linear stage is, with bias_factor = 1.
    inputs = make_sdpa_inputs(2, 2, 4, 6, 5, 3, 2, torch.float64, device, seed=9)
    attn_mask = make_mask(mask, 2, 2, 4, 6, torch.float64, device)
    scale = 1 / math.sqrt(5)
    scores, weights, output, allowed, bias = sdpa_forward_reference(inputs["q"], inputs["k"], inputs["v"], attn_mask)
    relevance_v, relevance_a = sdpa_value_rule(weights, inputs["v"], output, inputs["relevance"], allowed, 0.01, 1.0)
    torch.testing.assert_close(relevance_v.sum() + 0 * relevance_a.sum(), inputs["relevance"].sum())
    torch.testing.assert_close(relevance_a.sum(), inputs["relevance"].sum())
    relevance_scores = softmax_rule(scores, weights, relevance_a / 2)
    relevance_q, relevance_k = bilinear_score_rule(inputs["q"], inputs["k"], scores, relevance_scores, bias, allowed,
                                                   0.01, 1.0, scale)
    torch.testing.assert_close(relevance_q.sum() + relevance_k.sum(), relevance_scores.sum())
    fused = lrp_sdpa(**inputs, attn_mask=attn_mask, mode="attnlrp", bias_factor=1.0)
    torch.testing.assert_close(fused[0].sum() + fused[1].sum(), relevance_scores.sum())
    torch.testing.assert_close(fused[2].sum(), inputs["relevance"].sum() / 2)


def test_sdpa_constant_gradient_times_input_identity(device):
    # docs/LRP_RULES.md property 4: weights detached, eps -> 0, start relevance = output: R_V = V * dO/dV.
    inputs = make_sdpa_inputs(2, 3, 4, 5, 6, 7, None, torch.float64, device, seed=10)
    _, weights, _, _, _ = sdpa_forward_reference(inputs["q"], inputs["k"], inputs["v"])
    v = inputs["v"].clone().requires_grad_(True)
    output = weights @ v
    (gradient,) = torch.autograd.grad(output.sum(), v)
    relevance_v = lrp_sdpa(inputs["q"], inputs["k"], inputs["v"], output.detach(), eps=1e-12)
    assert_matches(relevance_v, inputs["v"] * gradient, rtol=1e-7)


@pytest.mark.parametrize("mode", ["constant", "attnlrp"])
def test_sdpa_many_targets_equal_one_at_a_time(mode, device, dtype, value_pass):
    inputs = make_sdpa_inputs(2, 2, 5, 6, 3, 4, 4, dtype, device, seed=11)
    attn_mask = make_mask("float", 2, 2, 5, 6, dtype, device)
    together = lrp_sdpa(**inputs, attn_mask=attn_mask, mode=mode, bias_factor=0.5)
    for k in range(4):
        alone = lrp_sdpa(**{**inputs, "relevance": inputs["relevance"][k]}, attn_mask=attn_mask, mode=mode,
                         bias_factor=0.5)
        for got, want in zip(*(((alone,), (together,)) if mode == "constant" else (alone, together))):
            assert_matches(got, want[k])


def test_per_head_explanation_is_other_heads_zeroed(device):
    inputs = make_sdpa_inputs(2, 3, 4, 5, 6, 7, None, torch.float64, device, seed=12)
    all_heads = lrp_sdpa(**inputs)
    head_one = inputs["relevance"].clone()
    head_one[:, [0, 2]] = 0
    only_one = lrp_sdpa(**{**inputs, "relevance": head_one})
    assert_matches(only_one[:, 1], all_heads[:, 1])
    assert torch.all(only_one[:, [0, 2]] == 0)


@pytest.mark.parametrize("n_targets", [None, 2])
def test_opcheck(n_targets, device):
    for dtype in (torch.float32, torch.float64):
        additive = make_additive_inputs(3, 4, 5, n_targets, dtype, device, seed=13)
        torch.library.opcheck(torch.ops.capxai.lrp_additive_attention.default, tuple(additive.values()) + (0.01, 1.0))
        sdpa = make_sdpa_inputs(2, 2, 3, 4, 5, 6, n_targets, dtype, device, seed=14)
        mask = make_mask("float", 2, 2, 3, 4, dtype, device)
        for op in (torch.ops.capxai.lrp_sdpa.default, torch.ops.capxai.lrp_sdpa_attnlrp.default):
            torch.library.opcheck(op, tuple(sdpa.values()) + (mask, 0.01, 0.5, None))
            torch.library.opcheck(op, tuple(sdpa.values()) + (None, 0.01, 0.0, 0.3))


def test_torch_compile_without_graph_breaks(device):
    additive = make_additive_inputs(3, 4, 5, 2, torch.float32, device, seed=15)
    sdpa = make_sdpa_inputs(2, 2, 3, 4, 5, 6, 2, torch.float32, device, seed=16)

    def explain(values, weights, relevance, q, k, v, relevance_sdpa):
        relevance_q, _, relevance_v = lrp_sdpa(q, k, v, relevance_sdpa, mode="attnlrp")
        return (lrp_additive_attention(values, weights, relevance).sum(-1), relevance_q * 2,
                lrp_sdpa(q, k, v, relevance_sdpa) - relevance_v)

    args = (*additive.values(), sdpa["q"], sdpa["k"], sdpa["v"], sdpa["relevance"])
    compiled = torch.compile(explain, backend="aot_eager", fullgraph=True)
    for got, want in zip(compiled(*args), explain(*args)):
        torch.testing.assert_close(got, want)


def _additive_bad_cases():
    return {
        "values rank": (lambda a: {**a, "values": a["values"][0]}, ValueError, r"values must be \[B, N, D\]"),
        "weights N": (lambda a: {**a, "weights": a["weights"][:, :-1]}, ValueError, r"weights must be \[B, N\]"),
        "relevance D": (lambda a: {**a, "relevance": a["relevance"][..., :-1]}, ValueError, "D = values.shape"),
        "int weights": (lambda a: {**a, "weights": a["weights"].long()}, TypeError,
                    "weights must be float16, bfloat16, float32 or float64"),
        "NaN relevance": (lambda a: {**a, "relevance": a["relevance"] * math.nan}, ValueError,
                          "relevance contains NaN"),
        "Inf values": (lambda a: {**a, "values": a["values"] * math.inf}, ValueError, "contains NaN or Inf"),
    }


@pytest.mark.parametrize("case", list(_additive_bad_cases()))
def test_additive_bad_input_names_the_argument(case):
    change, error, message = _additive_bad_cases()[case]
    with pytest.raises(error, match=message):
        lrp_additive_attention(**change(make_additive_inputs(3, 4, 5, 2, torch.float64, "cpu")))


def _sdpa_bad_cases():
    return {
        "q rank": (lambda a: {**a, "q": a["q"][0]}, ValueError, r"q must be \[B, h, Lq, d\]"),
        "k d": (lambda a: {**a, "k": a["k"][..., :-1]}, ValueError, "d = q.shape"),
        "v Lk": (lambda a: {**a, "v": a["v"][:, :, :-1]}, ValueError, "Lk = k.shape"),
        "relevance dv": (lambda a: {**a, "relevance": a["relevance"][..., :-1]}, ValueError, "dv = v.shape"),
        "mixed dtype": (lambda a: {**a, "k": a["k"].float()}, TypeError, "k must have the dtype of q"),
        "int mask": (lambda a: {**a, "attn_mask": torch.ones(3, 4, dtype=torch.int32)}, TypeError, "attn_mask must be"),
        "mask shape": (lambda a: {**a, "attn_mask": torch.ones(3, 5, dtype=torch.bool)}, ValueError,
                       "attn_mask must broadcast"),
        "NaN mask": (lambda a: {**a, "attn_mask": torch.full((3, 4), math.nan, dtype=torch.float64)}, ValueError,
                     "attn_mask must not contain NaN"),
        "NaN relevance": (lambda a: {**a, "relevance": a["relevance"] * math.nan}, ValueError, "relevance contains"),
        "bad mode": (lambda a: {**a, "mode": "gradient"}, ValueError, "mode must be one of"),
    }


@pytest.mark.parametrize("case", list(_sdpa_bad_cases()))
def test_sdpa_bad_input_names_the_argument(case):
    change, error, message = _sdpa_bad_cases()[case]
    inputs = make_sdpa_inputs(2, 2, 3, 4, 5, 6, 2, torch.float64, "cpu")
    for mode in ("constant", "attnlrp"):
        with pytest.raises(error, match=message):
            lrp_sdpa(**{"mode": mode, **change(inputs)})


def test_additive_context_that_overflows_is_refused(device):
    # The context sum_n w_n v_n overflows float32 with finite inputs: R / inf would be a silent 0 (issue 24).
    inputs = make_additive_inputs(2, 3, 4, None, torch.float32, device, seed=12)
    inputs["values"].fill_(3e38)
    inputs["weights"].fill_(1.0)
    with pytest.raises(ValueError, match="lrp_additive_attention: the inputs are finite but a forward value"):
        lrp_additive_attention(**inputs)


@pytest.mark.parametrize("mode", ["constant", "attnlrp"])
def test_sdpa_scores_that_overflow_are_refused(mode, device):
    inputs = make_sdpa_inputs(1, 1, 2, 3, 4, 4, None, torch.float32, device, seed=12)
    inputs["q"].fill_(1e20)
    inputs["k"].fill_(1e20)
    with pytest.raises(ValueError, match="lrp_sdpa(_attnlrp)?: the inputs are finite but a forward value"):
        lrp_sdpa(**inputs, mode=mode)
