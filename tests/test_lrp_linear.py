"""lrp_linear: fused kernel vs reference, docs/LRP_RULES.md properties, opcheck, torch.compile, bad input."""
import math

import pytest
import torch

from capxai.ops import lrp_linear
from capxai.ops.reference import lrp_linear_reference, stabilize
from helpers import make_linear_inputs as make_inputs


SHAPES = [  # (N, In, Out): odd sizes, batch 1, N > 1024, wide outputs
    (1, 1, 1), (1, 17, 3), (7, 13, 5), (33, 129, 67), (1500, 9, 11), (4, 300, 1025),
]


@pytest.mark.parametrize("n_rows,n_in,n_out", SHAPES)
@pytest.mark.parametrize("n_targets", [None, 1, 5], ids=["noK", "K1", "K5"])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("bias_factor", [0.0, 1.0], ids=["bf0", "bf1"])
def test_kernel_matches_reference(n_rows, n_in, n_out, n_targets, with_bias, bias_factor, device, dtype, tolerance):
    inputs = make_inputs(n_rows, n_in, n_out, n_targets, dtype, device, with_bias)
    result = lrp_linear(**inputs, eps=0.01, bias_factor=bias_factor)
    expected = lrp_linear_reference(**inputs, eps=0.01, bias_factor=bias_factor)
    assert result.shape == expected.shape == (*inputs["relevance"].shape[:-1], n_in)
    assert result.dtype == dtype and result.device.type == device.type
    torch.testing.assert_close(result, expected, **tolerance)


def test_zero_preactivation_uses_plus_eps(device, dtype):
    # Small integers make many pre-activations exactly 0; sign(0) = +1, so stab(0) = +eps.
    generator = torch.Generator().manual_seed(1)
    x = torch.randint(-1, 2, (64, 6), generator=generator).to(device, dtype)
    weight = torch.randint(-1, 2, (5, 6), generator=generator).to(device, dtype)
    relevance = torch.rand(3, 64, 5, generator=generator, dtype=dtype).to(device)
    z = x @ weight.T
    assert (z == 0).sum() > 20, "the test needs exact zeros"
    result = lrp_linear(x, weight, None, relevance, eps=0.01)
    expected = x * ((relevance / torch.where(z >= 0, z + 0.01, z - 0.01)) @ weight)
    torch.testing.assert_close(result, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(lrp_linear_reference(x, weight, None, relevance, eps=0.01), expected,
                               rtol=1e-6, atol=1e-6)
    assert torch.all(stabilize(torch.zeros(1, dtype=dtype), 0.01) == 0.01)


@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
def test_conservation_with_bias_factor_one(with_bias, device):
    inputs = make_inputs(40, 23, 17, 6, torch.float64, device, with_bias, seed=3)
    result = lrp_linear(**inputs, eps=0.01, bias_factor=1.0)
    relevance_in = result.sum(dim=(1, 2))
    relevance_out = inputs["relevance"].sum(dim=(1, 2))
    relative_error = ((relevance_in - relevance_out).abs() / relevance_out.abs()).max().item()
    assert relative_error < 1e-6
    # per row too: each sample's relevance is conserved on its own
    torch.testing.assert_close(result.sum(-1), inputs["relevance"].sum(-1), rtol=1e-9, atol=1e-9)


def test_without_bias_factor_the_bias_absorbs(device):
    inputs = make_inputs(10, 8, 6, None, torch.float64, device, seed=4)
    inputs["bias"] = inputs["bias"].abs() * 10 + 5  # large positive bias: absorbs a visible share
    inputs["x"] = inputs["x"].abs()
    inputs["weight"] = inputs["weight"].abs()
    inputs["relevance"] = inputs["relevance"].abs()
    result = lrp_linear(**inputs)
    assert (result.sum() < 0.9 * inputs["relevance"].sum()).item()


@pytest.mark.parametrize("bias_factor", [0.0, 0.5])
def test_many_targets_equal_one_at_a_time(bias_factor, device, dtype, tolerance):
    inputs = make_inputs(50, 31, 19, 7, dtype, device, seed=5)
    together = lrp_linear(**inputs, bias_factor=bias_factor)
    for k in range(7):
        alone = lrp_linear(inputs["x"], inputs["weight"], inputs["bias"], inputs["relevance"][k],
                           bias_factor=bias_factor)
        torch.testing.assert_close(together[k], alone, **tolerance)


def test_gradient_times_input_identity(device):
    # docs/LRP_RULES.md property 4: eps -> 0, zero bias, start relevance = output => LRP equals x * d(sum z)/dx,
    # computed here by autograd, independent of either implementation.
    generator = torch.Generator().manual_seed(6)
    x = torch.randn(12, 9, generator=generator, dtype=torch.float64).to(device).requires_grad_(True)
    weight = torch.randn(7, 9, generator=generator, dtype=torch.float64).to(device)
    output = x @ weight.T
    (gradient,) = torch.autograd.grad(output.sum(), x)
    relevance = lrp_linear(x.detach(), weight, None, output.detach(), eps=1e-12)
    torch.testing.assert_close(relevance, x.detach() * gradient, rtol=1e-7, atol=1e-9)


def test_non_contiguous_inputs(device):
    inputs = make_inputs(9, 12, 8, 3, torch.float64, device, seed=7)
    strided = dict(x=inputs["x"].T.contiguous().T, weight=inputs["weight"][:, :].T.contiguous().T,
                   bias=inputs["bias"], relevance=inputs["relevance"].transpose(0, 1).contiguous().transpose(0, 1))
    assert not strided["x"].is_contiguous() and not strided["relevance"].is_contiguous()
    torch.testing.assert_close(lrp_linear(**strided), lrp_linear(**inputs), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n_rows,n_in,n_out,n_targets", [(0, 4, 3, 2), (5, 4, 3, 0), (5, 0, 3, 2), (5, 4, 0, 2)])
def test_empty_dimensions(n_rows, n_in, n_out, n_targets, device):
    inputs = make_inputs(n_rows, n_in, n_out, n_targets, torch.float64, device)
    result = lrp_linear(**inputs, bias_factor=1.0)
    assert result.shape == (n_targets, n_rows, n_in)
    torch.testing.assert_close(result, lrp_linear_reference(**inputs, bias_factor=1.0))
    if n_out == 0:
        assert torch.all(result == 0)


@pytest.mark.parametrize("n_targets", [None, 3])
def test_opcheck(n_targets, device):
    for dtype in (torch.float32, torch.float64):
        inputs = make_inputs(6, 5, 4, n_targets, dtype, device, seed=8)
        torch.library.opcheck(torch.ops.capxai.lrp_linear.default,
                              (inputs["x"], inputs["weight"], inputs["bias"], inputs["relevance"], 0.01, 0.5))
        torch.library.opcheck(torch.ops.capxai.lrp_linear.default,
                              (inputs["x"], inputs["weight"], None, inputs["relevance"], 0.01, 0.0))


def test_torch_compile_without_graph_breaks(device):
    inputs = make_inputs(8, 6, 5, 2, torch.float32, device, seed=9)

    def explain(x, weight, bias, relevance):
        return lrp_linear(torch.relu(x), weight, bias, relevance * 2.0).sum(0)

    compiled = torch.compile(explain, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(**inputs), explain(**inputs))


# -- bad input: each case changes one argument and names the expected exception and message --------------------
def _bad_cases():
    nan_relevance = lambda a: {**a, "relevance": a["relevance"].clone().index_fill_(0, torch.tensor([0]), math.nan)}
    return {
        "x rank 1": (lambda a: {**a, "x": a["x"][0]}, ValueError, "x must be [N, In]"),
        "x rank 3": (lambda a: {**a, "x": a["x"][None]}, ValueError, "x must be [N, In]"),
        "weight rank 1": (lambda a: {**a, "weight": a["weight"][0]}, ValueError, "weight must be [Out, In]"),
        "weight In mismatch": (lambda a: {**a, "weight": a["weight"][:, :-1]}, ValueError, "weight must be [Out, In]"),
        "bias size": (lambda a: {**a, "bias": a["bias"][:-1]}, ValueError, "bias must be [Out]"),
        "bias rank": (lambda a: {**a, "bias": a["bias"][None]}, ValueError, "bias must be [Out]"),
        "relevance rank 1": (lambda a: {**a, "relevance": a["relevance"][0, 0]}, ValueError, "relevance must be"),
        "relevance rank 4": (lambda a: {**a, "relevance": a["relevance"][None]}, ValueError, "relevance must be"),
        "relevance N mismatch": (lambda a: {**a, "relevance": a["relevance"][:, :-1]}, ValueError, "N = x.shape[0]"),
        "relevance Out mismatch": (lambda a: {**a, "relevance": a["relevance"][..., :-1]}, ValueError,
                                   "Out = weight.shape[0]"),
        "int x": (lambda a: {**a, "x": a["x"].long()}, TypeError, "x must be float16, bfloat16, float32 or float64"),
        "int relevance": (lambda a: {**a, "relevance": a["relevance"].int()}, TypeError,
                          "relevance must be float16, bfloat16, float32 or float64"),
        "half weight": (lambda a: {**a, "weight": a["weight"].half()}, TypeError, "weight must have the dtype of x"),
        "mixed dtypes": (lambda a: {**a, "weight": a["weight"].float()}, TypeError, "weight must have the dtype of x"),
        "mixed bias dtype": (lambda a: {**a, "bias": a["bias"].float()}, TypeError, "bias must have the dtype of x"),
        "NaN relevance": (nan_relevance, ValueError, "relevance contains NaN or Inf"),
        "Inf x": (lambda a: {**a, "x": a["x"].clone().fill_(math.inf)}, ValueError, "x contains NaN or Inf"),
        "NaN weight": (lambda a: {**a, "weight": a["weight"] * math.nan}, ValueError, "weight contains NaN or Inf"),
        "negative eps": (lambda a: {**a, "eps": -0.1}, ValueError, "eps must be finite and >= 0"),
        "NaN eps": (lambda a: {**a, "eps": math.nan}, ValueError, "eps must be finite"),
        "Inf bias_factor": (lambda a: {**a, "bias_factor": math.inf}, ValueError, "bias_factor must be finite"),
    }


@pytest.mark.parametrize("case", list(_bad_cases()))
def test_bad_input_names_the_argument(case):
    change, error, message = _bad_cases()[case]
    inputs = make_inputs(6, 5, 4, 2, torch.float64, "cpu", seed=10)
    with pytest.raises(error, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")):
        lrp_linear(**change(inputs))


def test_none_for_a_tensor_argument_is_a_type_error():
    inputs = make_inputs(6, 5, 4, 2, torch.float64, "cpu")
    with pytest.raises((TypeError, RuntimeError), match="x"):
        lrp_linear(**{**inputs, "x": None})


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU present")
def test_mixed_devices_name_the_argument():
    inputs = make_inputs(6, 5, 4, 2, torch.float64, "cuda")
    with pytest.raises(ValueError, match="relevance must be on the device of x"):
        lrp_linear(**{**inputs, "relevance": inputs["relevance"].cpu()})


def test_overflow_with_finite_inputs_is_reported(device):
    inputs = make_inputs(4, 3, 2, None, torch.float32, device, seed=11)
    inputs["relevance"] = torch.full((4, 2), 1e37, device=device)  # R / stab(z) exceeds float32
    with pytest.raises(ValueError, match="inputs are finite but .* overflowed"):
        lrp_linear(**inputs, eps=1e-3)


def test_a_forward_value_that_overflows_is_refused_not_divided_to_zero(device):
    # z = x W^T overflows float32 while every input is finite: R / inf would be a silent 0 (issue 24).
    inputs = make_inputs(4, 3, 2, None, torch.float32, device, seed=12)
    inputs["x"].fill_(1e20)
    inputs["weight"].fill_(1e20)
    with pytest.raises(ValueError, match="lrp_linear: the inputs are finite but a forward value"):
        lrp_linear(**inputs)
