"""lrp_lstm / lrp_lstm_cell: fused kernels vs reference, docs/LRP_RULES.md properties, opcheck, compile, bad input."""
import math

import pytest
import torch

from capxai.ops import lrp_lstm, lrp_lstm_cell
from capxai.ops.reference import _lstm_forward, lrp_lstm_cell_reference, lrp_lstm_reference
from helpers import assert_matches, make_lstm_inputs


def word_targets(inputs):
    """'Explain every word': target k gets relevance only at step k (the captioning use)."""
    relevance = inputs["relevance_h"]
    steps = relevance.shape[1]
    mask = torch.eye(steps, dtype=relevance.dtype, device=relevance.device)[:, :, None, None]
    return {**inputs, "relevance_h": relevance * mask, "relevance_c": None}


SHAPES = [  # (T, B, D, H, K): T = 1 and 50, batch 1 and > 1024, sizes off any tile, K = 1 and 25
    (1, 1, 1, 1, None), (1, 3, 5, 7, 1), (50, 2, 3, 4, None), (50, 3, 6, 5, 25), (3, 1100, 3, 5, 2),
    (7, 3, 17, 9, 25), (4, 2, 40, 70, 3),
]


@pytest.mark.parametrize("steps,batch,n_in,hidden,n_targets", SHAPES)
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("with_cell", [True, False], ids=["Rc", "noRc"])
@pytest.mark.parametrize("bias_factor", [0.0, 1.0], ids=["bf0", "bf1"])
def test_kernel_matches_reference(steps, batch, n_in, hidden, n_targets, with_bias, with_cell, bias_factor, device,
                                  dtype):
    inputs = make_lstm_inputs(steps, batch, n_in, hidden, n_targets, dtype, device, with_bias, with_cell)
    result = lrp_lstm(**inputs, eps=0.01, bias_factor=bias_factor)
    expected = lrp_lstm_reference(**inputs, eps=0.01, bias_factor=bias_factor)
    for got, want in zip(result, expected):
        assert_matches(got, want)


@pytest.mark.parametrize("bias_factor", [0.0, 1.0], ids=["bf0", "bf1"])
def test_every_word_targets_skip_work_and_match(bias_factor, device, dtype):
    inputs = word_targets(make_lstm_inputs(20, 4, 24, 16, 20, dtype, device, seed=1))
    result = lrp_lstm(**inputs, bias_factor=bias_factor)
    for got, want in zip(result, lrp_lstm_reference(**inputs, bias_factor=bias_factor)):
        assert_matches(got, want)
    # target k has no relevance after step k
    relevance_x = result[0]
    for k in range(20):
        assert torch.all(relevance_x[k, k + 1:] == 0)


def test_targets_in_any_order_and_without_relevance(device):
    inputs = make_lstm_inputs(6, 3, 5, 4, 5, torch.float64, device, seed=2)
    relevance = inputs["relevance_h"].clone()
    relevance[0, 2:] = 0  # last step 1
    relevance[1] = 0  # no relevance at all
    relevance[3, 4:] = 0  # last step 3
    inputs = {**inputs, "relevance_h": relevance, "relevance_c": None}
    result = lrp_lstm(**inputs)
    for got, want in zip(result, lrp_lstm_reference(**inputs)):
        assert_matches(got, want)
    assert all(torch.all(r[1] == 0) for r in result)


def test_zero_activations_use_plus_eps(device, dtype):
    # x = 0, states 0, biases 0: z = 0 everywhere, g = tanh(0) = 0, c = 0, so both stabilisers see sign(0) = +1.
    inputs = make_lstm_inputs(3, 2, 4, 5, 2, dtype, device, with_bias=False, seed=3)
    inputs.update(x=torch.zeros_like(inputs["x"]), h0=torch.zeros_like(inputs["h0"]),
                  c0=torch.zeros_like(inputs["c0"]))
    result = lrp_lstm(**inputs, bias_factor=1.0)
    for got, want in zip(result, lrp_lstm_reference(**inputs, bias_factor=1.0)):
        assert_matches(got, want)
        assert torch.isfinite(got).all()


@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
def test_conservation_with_bias_factor_one(with_bias, device):
    inputs = make_lstm_inputs(9, 4, 7, 6, 3, torch.float64, device, with_bias=with_bias, seed=4)
    relevance_x, relevance_h0, relevance_c0 = lrp_lstm(**inputs, bias_factor=1.0)
    total_in = relevance_x.sum((1, 2, 3)) + relevance_h0.sum((1, 2)) + relevance_c0.sum((1, 2))
    total_out = inputs["relevance_h"].sum((1, 2, 3)) + inputs["relevance_c"].sum((1, 2, 3))
    assert ((total_in - total_out).abs() / total_out.abs()).max().item() < 1e-6


def test_many_targets_equal_one_at_a_time(device, dtype):
    inputs = make_lstm_inputs(8, 3, 6, 5, 6, dtype, device, seed=5)
    together = lrp_lstm(**inputs, bias_factor=0.3)
    for k in range(6):
        alone = lrp_lstm(**{**inputs, "relevance_h": inputs["relevance_h"][k],
                            "relevance_c": inputs["relevance_c"][k]}, bias_factor=0.3)
        for got, want in zip(alone, together):
            assert_matches(got, want[k])


def test_reference_forward_is_torch_lstm():
    lstm = torch.nn.LSTM(5, 7).double()
    inputs = make_lstm_inputs(6, 3, 5, 7, None, torch.float64, "cpu", seed=6)
    output, _ = lstm(inputs["x"], (inputs["h0"][None], inputs["c0"][None]))
    steps = _lstm_forward(inputs["x"], inputs["h0"], inputs["c0"], lstm.weight_ih_l0, lstm.weight_hh_l0,
                          lstm.bias_ih_l0, lstm.bias_hh_l0)
    hidden = torch.stack([h_prev for h_prev, *_ in steps[1:]])  # h_1 .. h_{T-1}
    torch.testing.assert_close(hidden, output[:-1])


@pytest.mark.parametrize("n_targets", [None, 4])
@pytest.mark.parametrize("with_cell", [True, False], ids=["Rc", "noRc"])
def test_cell_matches_reference_and_sequence(n_targets, with_cell, device, dtype):
    inputs = make_lstm_inputs(1, 5, 6, 7, n_targets, dtype, device, with_cell=with_cell, seed=7)
    step = 0 if n_targets is None else 1
    cell_inputs = dict(x=inputs["x"][0], h_prev=inputs["h0"], c_prev=inputs["c0"], weight_ih=inputs["weight_ih"],
                       weight_hh=inputs["weight_hh"], bias_ih=inputs["bias_ih"], bias_hh=inputs["bias_hh"],
                       relevance_h=inputs["relevance_h"].select(step, 0),
                       relevance_c=None if not with_cell else inputs["relevance_c"].select(step, 0))
    result = lrp_lstm_cell(**cell_inputs, bias_factor=0.5)
    for got, want in zip(result, lrp_lstm_cell_reference(**cell_inputs, bias_factor=0.5)):
        assert_matches(got, want)
    sequence = lrp_lstm(**inputs, bias_factor=0.5)
    assert_matches(result[0], sequence[0].select(step, 0))


@pytest.mark.parametrize("n_targets", [None, 3])
def test_opcheck(n_targets, device):
    for dtype in (torch.float32, torch.float64):
        inputs = make_lstm_inputs(4, 3, 5, 6, n_targets, dtype, device, seed=8)
        torch.library.opcheck(torch.ops.capxai.lrp_lstm.default, tuple(inputs.values()) + (0.01, 0.5))
        cell = (inputs["x"][0], inputs["h0"], inputs["c0"], inputs["weight_ih"], inputs["weight_hh"], None,
                inputs["bias_hh"], inputs["relevance_h"][..., 0, :, :], None, 0.01, 0.0)
        torch.library.opcheck(torch.ops.capxai.lrp_lstm_cell.default, cell)


def test_torch_compile_without_graph_breaks(device):
    inputs = make_lstm_inputs(5, 2, 4, 3, 2, torch.float32, device, seed=9)

    def explain(**kwargs):
        relevance_x, relevance_h0, _ = lrp_lstm(**kwargs)
        return relevance_x.sum(-1), relevance_h0 * 2

    compiled = torch.compile(explain, backend="aot_eager", fullgraph=True)
    for got, want in zip(compiled(**inputs), explain(**inputs)):
        torch.testing.assert_close(got, want)


def _bad_cases():
    return {
        "x rank": (lambda a: {**a, "x": a["x"][0]}, ValueError, r"x must be \[T, B, D\]"),
        "h0 batch": (lambda a: {**a, "h0": a["h0"][:-1]}, ValueError, r"h0 must be \[B, H\]"),
        "c0 hidden": (lambda a: {**a, "c0": a["c0"][:, :-1]}, ValueError, r"c0 must be \[B, H\]"),
        "weight_ih D": (lambda a: {**a, "weight_ih": a["weight_ih"][:, :-1]}, ValueError, "weight_ih must be"),
        "weight_hh not 4H": (lambda a: {**a, "weight_hh": a["weight_hh"][:-1]}, ValueError, "weight_hh must be"),
        "bias_ih size": (lambda a: {**a, "bias_ih": a["bias_ih"][:-1]}, ValueError, r"bias_ih must be \[4H\]"),
        "bias_hh dtype": (lambda a: {**a, "bias_hh": a["bias_hh"].float()}, TypeError, "bias_hh must have the dtype"),
        "relevance_h T": (lambda a: {**a, "relevance_h": a["relevance_h"][:, :-1]}, ValueError, "T = x.shape"),
        "relevance_h rank": (lambda a: {**a, "relevance_h": a["relevance_h"][0, 0]}, ValueError, "relevance_h must"),
        "relevance_c shape": (lambda a: {**a, "relevance_c": a["relevance_c"][0]}, ValueError, "relevance_c must"),
        "int x": (lambda a: {**a, "x": a["x"].int()}, TypeError, "x must be float16, bfloat16, float32 or float64"),
        "mixed dtype": (lambda a: {**a, "h0": a["h0"].float()}, TypeError, "h0 must have the dtype of x"),
        "NaN relevance_h": (lambda a: {**a, "relevance_h": a["relevance_h"] * math.nan}, ValueError,
                            "relevance_h contains NaN"),
        "Inf relevance_c": (lambda a: {**a, "relevance_c": a["relevance_c"] * math.inf}, ValueError,
                            "relevance_c contains NaN"),
        "NaN x": (lambda a: {**a, "x": a["x"] * math.nan}, ValueError, "x contains NaN"),
        "NaN weight_hh": (lambda a: {**a, "weight_hh": a["weight_hh"] * math.nan}, ValueError, "contains NaN"),
        "negative eps": (lambda a: {**a, "eps": -1.0}, ValueError, "eps must be finite and >= 0"),
    }


@pytest.mark.parametrize("case", list(_bad_cases()))
def test_bad_input_names_the_argument(case):
    change, error, message = _bad_cases()[case]
    inputs = make_lstm_inputs(3, 2, 4, 5, 2, torch.float64, "cpu", seed=10)
    with pytest.raises(error, match=message):
        lrp_lstm(**change(inputs))


def test_cell_bad_input_names_the_argument():
    inputs = make_lstm_inputs(1, 2, 4, 5, None, torch.float64, "cpu")
    args = [inputs["x"][0], inputs["h0"], inputs["c0"], inputs["weight_ih"], inputs["weight_hh"], None, None,
            inputs["relevance_h"][0]]
    with pytest.raises(ValueError, match=r"lrp_lstm_cell: x must be \[B, D\]"):
        lrp_lstm_cell(inputs["x"], *args[1:])
    with pytest.raises(ValueError, match=r"lrp_lstm_cell \(as lrp_lstm with T = 1\): lrp_lstm: h_prev must be"):
        lrp_lstm_cell(*args[:1], inputs["h0"][:1], *args[2:])
    with pytest.raises(TypeError, match=r"lrp_lstm_cell .*c_prev must have the dtype of x"):
        lrp_lstm_cell(*args[:2], inputs["c0"].float(), *args[3:])


# Issue 24: an Inf in a weight row the relevance rule never reads (the i, f and o gates' rows) still enters the
# forward; the op refuses it, naming the argument, on every dtype.
@pytest.mark.parametrize("argument,row", [("weight_ih", 0), ("weight_hh", 5), ("bias_ih", 3 * 5 + 1), ("c0", 0)])
def test_a_non_finite_value_the_rule_never_reads_is_refused(argument, row, device, dtype):
    inputs = make_lstm_inputs(3, 2, 4, 5, 2, dtype, device, seed=12)
    changed = inputs[argument].clone()
    changed.view(changed.shape[0], -1)[row, 0] = math.inf
    with pytest.raises(ValueError, match=f"lrp_lstm: {argument} contains NaN or Inf"):
        lrp_lstm(**{**inputs, argument: changed})


def test_a_gate_input_that_overflows_the_forward_is_refused(device):
    # Finite inputs whose input-gate pre-activation overflows float32: sigmoid(inf) = 1 would hide it.
    inputs = make_lstm_inputs(2, 2, 4, 5, None, torch.float32, device, seed=13)
    inputs["weight_ih"][0].fill_(3e38)
    inputs["x"].abs_()
    with pytest.raises(ValueError, match="lrp_lstm: the inputs are finite but a forward value"):
        lrp_lstm(**inputs)
