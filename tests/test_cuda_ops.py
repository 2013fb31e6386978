"""What only a GPU shows of the ops (issue 36): host synchronisations per call, argument checks before any CUDA state
(mixed devices), NaN/Inf refused on every argument, row counts past the grid's y limit, the fused SDPA pass in half
precision with bool and causal masks, empty and non-contiguous inputs, a non-default stream, a non-current device,
and autocast at the op level. Tests that hold on the CPU as well run there too (the ``device`` fixture), so their
expectations are checked on every machine; the CUDA-only ones are marked ``cuda``.

Every op is called through one table (``OPS``): a builder of its keyword arguments and the reference it must equal.
"""
import math
import warnings

import pytest
import torch

from capxai import ops
from capxai.ops import reference
from helpers import (assert_matches, make_additive_inputs, make_linear_inputs, make_lstm_inputs, make_mask,
                     make_sdpa_inputs)

needs_gpu = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU present")]


def _lstm_cell_inputs(dtype, device, n_targets=2):
    full = make_lstm_inputs(1, 3, 10, 12, n_targets, dtype, device)
    return {"x": full["x"][0], "h_prev": full["h0"], "c_prev": full["c0"], "weight_ih": full["weight_ih"],
            "weight_hh": full["weight_hh"], "bias_ih": full["bias_ih"], "bias_hh": full["bias_hh"],
            "relevance_h": full["relevance_h"][:, 0], "relevance_c": full["relevance_c"][:, 0]}


def _sdpa_inputs(dtype, device):
    inputs = make_sdpa_inputs(2, 3, 9, 40, 16, 16, 2, dtype, device)
    return {**inputs, "attn_mask": make_mask("float", 2, 3, 9, 40, dtype, device)}


# name -> (op, inputs(dtype, device), reference, host synchronisations per call on CUDA (docs/LRP_RULES.md (Part 2)))
OPS = {
    "lrp_linear": (ops.lrp_linear, lambda dtype, device: make_linear_inputs(9, 33, 17, 3, dtype, device),
                   reference.lrp_linear_reference, 1),
    "lrp_lstm": (ops.lrp_lstm, lambda dtype, device: make_lstm_inputs(6, 3, 10, 12, 2, dtype, device),
                 reference.lrp_lstm_reference, 2),
    "lrp_lstm_cell": (ops.lrp_lstm_cell, _lstm_cell_inputs, reference.lrp_lstm_cell_reference, 2),
    "lrp_additive_attention": (ops.lrp_additive_attention,
                               lambda dtype, device: make_additive_inputs(4, 50, 24, 3, dtype, device),
                               reference.lrp_additive_attention_reference, 1),
    "lrp_sdpa": (ops.lrp_sdpa, _sdpa_inputs, reference.lrp_sdpa_reference, 1),
    "lrp_sdpa_attnlrp": (lambda **a: ops.lrp_sdpa(**a, mode="attnlrp"), _sdpa_inputs,
                         lambda **a: reference.lrp_sdpa_reference(**a, mode="attnlrp"), 1),
}


def _tensors(result):
    return (result,) if isinstance(result, torch.Tensor) else tuple(result)


def _call(name, inputs):
    return _tensors(OPS[name][0](**inputs))


def _tensor_arguments(name):
    inputs = OPS[name][1](torch.float64, "cpu")
    return [argument for argument, value in inputs.items() if isinstance(value, torch.Tensor)]


def _each_tensor_argument():
    return [pytest.param(name, argument, id=f"{name}-{argument}")
            for name in OPS for argument in _tensor_arguments(name)]


# -- host synchronisations --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", OPS)
@pytest.mark.parametrize("cuda", [pytest.param(None, marks=needs_gpu)], ids=["cuda"])
def test_host_synchronisations_per_call(name, cuda, capfd):
    """One per call (the flag read), two for lrp_lstm and its cell (the schedule's read, then the flag): counted by
    PyTorch's sync debug mode, which warns on every synchronising copy (a pageable host-to-device copy included).
    Its C++ warning reaches stderr, not Python's warnings, when it comes from inside a ``torch.ops`` call (torch
    2.11: no warning handler on that path), so both are counted."""
    op, make, _, expected = OPS[name]
    inputs = make(torch.float32, "cuda")
    op(**inputs)  # warm: lazy initialisation (cuBLAS handles, the pinned-memory allocator) stays out of the count
    torch.cuda.synchronize()
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            op(**inputs)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    message = "called a synchronizing CUDA operation"
    stderr = capfd.readouterr().err
    syncs = stderr.count(message) + sum(message in str(w.message) for w in caught)
    assert syncs == expected, stderr[-2000:]


# -- argument checks -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,argument", _each_tensor_argument())
@pytest.mark.parametrize("cuda", [pytest.param(None, marks=needs_gpu)], ids=["cuda"])
def test_an_argument_on_another_device_is_named(name, argument, cuda):
    """One argument on the CPU, the rest on the GPU (the dispatcher picks the CUDA kernel): a ValueError naming the
    argument, from the checks, not an internal error from a device guard built before them."""
    inputs = OPS[name][1](torch.float32, "cuda")
    inputs[argument] = inputs[argument].cpu()
    with pytest.raises(ValueError, match=rf"{argument} must be on the device of|of {argument} \(cpu\)"):
        _call(name, inputs)


@pytest.mark.parametrize("name,argument", _each_tensor_argument())
@pytest.mark.parametrize("value", [math.nan, math.inf], ids=["nan", "inf"])
def test_a_non_finite_argument_is_refused_by_name(name, argument, value, device):
    inputs = OPS[name][1](torch.float32, device)
    poisoned = inputs[argument].clone()
    poisoned.view(-1)[poisoned.numel() // 2] = value
    inputs[argument] = poisoned
    message = "attn_mask .*NaN or \\+Inf" if argument == "attn_mask" else f"{argument} contains NaN or Inf"
    with pytest.raises(ValueError, match=message):
        _call(name, inputs)


# -- sizes -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dim_v", [64, 256], ids=["dv64", "dv256"])
@pytest.mark.parametrize("cuda", [pytest.param(None, marks=needs_gpu)], ids=["cuda"])
def test_rows_beyond_the_grid_y_limit(dim_v, cuda):
    """More rows than one launch covers (65,535 blocks along y times the rows a block takes, row_launch), so the
    row loops of the additive-attention kernel and the SDPA epilogue take a second turn; float64 against the
    reference on the same GPU."""
    rows_per_block = 256 // dim_v
    rows = 65_535 * rows_per_block + 1_001
    additive = make_additive_inputs(1, rows, dim_v, None, torch.float64, "cuda")
    assert_matches(ops.lrp_additive_attention(**additive, bias_factor=1.0),
                   reference.lrp_additive_attention_reference(**additive, bias_factor=1.0))
    sdpa = make_sdpa_inputs(1, 1, 4, rows, 8, dim_v, None, torch.float64, "cuda")
    assert_matches(ops.lrp_sdpa(**sdpa, bias_factor=1.0), reference.lrp_sdpa_reference(**sdpa, bias_factor=1.0))


@pytest.mark.parametrize("name", OPS)
def test_empty_inputs(name, device):
    """No targets: an empty result of the right shape on every output, on each device."""
    inputs = OPS[name][1](torch.float32, device)
    relevance_names = [argument for argument in inputs if argument.startswith("relevance")]
    for argument in relevance_names:
        if inputs[argument] is not None:
            inputs[argument] = inputs[argument][:0]
    expected = _tensors(OPS[name][2](**inputs))
    for got, want in zip(_call(name, inputs), expected):
        assert got.shape == want.shape and got.numel() == 0 and got.device.type == torch.device(device).type


@pytest.mark.parametrize("name", OPS)
def test_non_contiguous_inputs(name, device):
    """Every tensor argument as a transposed view (same values, other strides): the same result."""
    inputs = OPS[name][1](torch.float64, device)
    strided = {}
    for argument, value in inputs.items():
        if isinstance(value, torch.Tensor) and value.dim() >= 2:
            value = value.transpose(-1, -2).contiguous().transpose(-1, -2)
            assert not value.is_contiguous() or 1 in value.shape[-2:]
        strided[argument] = value
    for got, want in zip(_call(name, strided), _call(name, inputs)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


# -- half precision: the fused SDPA pass -------------------------------------------------------------------------
@pytest.mark.parametrize("mask", ["bool", "causal", "float"])
@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("mode", ["constant", "attnlrp"])
def test_fused_sdpa_pass_in_half_precision_with_masks(mask, half, mode, device, monkeypatch):
    """The fused value pass (which CUDA never picks on its own: CAPXAI_SDPA_VALUE_PASS=fused) in float16 / bfloat16
    with bool and causal masks, against the float64 reference of the same rounded inputs, within the precision
    tolerance (docs/LRP_RULES.md (Part 2), "Precision": two units of the final rounding, relative to value and
    scale)."""
    monkeypatch.setenv("CAPXAI_SDPA_VALUE_PASS", "fused")
    inputs = {name: value.to(half) for name, value in make_sdpa_inputs(2, 3, 9, 33, 16, 24, 2, torch.float32,
                                                                       device).items()}
    attn_mask = make_mask(mask, 2, 3, 9, 33, half, device)
    result = _tensors(ops.lrp_sdpa(**inputs, attn_mask=attn_mask, mode=mode, bias_factor=1.0))
    exact = _tensors(reference.lrp_sdpa_reference(
        **{name: value.double() for name, value in inputs.items()},
        attn_mask=attn_mask.double() if attn_mask.is_floating_point() else attn_mask, mode=mode, bias_factor=1.0))
    tolerance = {torch.bfloat16: 2 ** -7, torch.float16: 2 ** -10}[half]
    for got, want in zip(result, exact):
        assert got.dtype == half
        assert_matches(got.double(), want, rtol=tolerance)


# -- streams and devices ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", OPS)
@pytest.mark.parametrize("cuda", [pytest.param(None, marks=needs_gpu)], ids=["cuda"])
def test_a_non_default_stream_is_followed(name, cuda):
    """Inputs written on a side stream after a long sleep there, the op called on that stream: right only if every
    kernel and copy of the op is queued on the current stream (a kernel on the default stream would read the
    NaN the buffers held before)."""
    op, make, _, _ = OPS[name]
    inputs = make(torch.float32, "cuda")
    expected = _tensors(op(**inputs))
    buffers = {argument: torch.full_like(value, math.nan) if isinstance(value, torch.Tensor) else value
               for argument, value in inputs.items()}
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        torch.cuda._sleep(50_000_000)  # about 25 ms at 2 GHz: a default-stream kernel would run before the copies
        for argument, value in inputs.items():
            if isinstance(value, torch.Tensor):
                buffers[argument].copy_(value)
        result = _tensors(op(**buffers))
    side.synchronize()
    for got, want in zip(result, expected):
        assert torch.equal(got, want)


@pytest.mark.parametrize("name", OPS)
@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="a non-current device needs a second GPU")
def test_a_non_current_device(name):
    """Inputs on cuda:1 while cuda:0 is current: the op runs on cuda:1 (its device guard) and equals the same call on
    cuda:0."""
    op, make, _, _ = OPS[name]
    on_first = make(torch.float32, "cuda:0")
    on_second = {argument: value.to("cuda:1") if isinstance(value, torch.Tensor) else value
                 for argument, value in on_first.items()}
    with torch.cuda.device(0):
        result = _tensors(op(**on_second))
    for got, want in zip(result, _tensors(op(**on_first))):
        assert got.device == torch.device("cuda:1")
        torch.testing.assert_close(got.to("cuda:0"), want, rtol=1e-5, atol=1e-6)


# -- autocast --------------------------------------------------------------------------------------------------
AUTOCAST = [pytest.param("cpu", torch.bfloat16, id="cpu-bfloat16"),
            pytest.param("cuda", torch.float16, id="cuda-float16", marks=needs_gpu),
            pytest.param("cuda", torch.bfloat16, id="cuda-bfloat16", marks=needs_gpu)]


@pytest.mark.parametrize("name", OPS)
@pytest.mark.parametrize("device_type,autocast_dtype", AUTOCAST)
def test_every_op_under_autocast_runs_in_the_widest_dtype(name, device_type, autocast_dtype):
    """Autocast hands an op its first tensor in half precision beside float32 others: the op runs in float32 and
    equals the call with that tensor cast back (and outside autocast the mix is refused)."""
    op, make, _, _ = OPS[name]
    inputs = make(torch.float32, device_type)
    first = next(argument for argument, value in inputs.items() if isinstance(value, torch.Tensor))
    mixed = {**inputs, first: inputs[first].to(autocast_dtype)}
    with torch.autocast(device_type, dtype=autocast_dtype):
        result = _tensors(op(**mixed))
    expected = _tensors(op(**{**inputs, first: mixed[first].float()}))
    for got, want in zip(result, expected):
        assert got.dtype == torch.float32
        assert torch.equal(got, want)
    with pytest.raises(TypeError, match="must have the dtype of"):
        op(**mixed)
