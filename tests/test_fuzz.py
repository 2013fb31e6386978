"""Fuzz: hundreds of random malformed calls to every op (wrong ranks, sizes, dtypes, empty tensors, NaN/Inf,
non-contiguous views, missing optionals). Each must raise a clean Python exception with a message, or return finite
results; none may crash the process."""
import math
import random

import pytest
import torch

from capxai.ops import lrp_additive_attention, lrp_linear, lrp_lstm, lrp_lstm_cell, lrp_sdpa

CALLS_PER_OP = 60


def _valid_arguments(op_name, rng):
    def t(*shape):
        return torch.randn(*shape, dtype=torch.float64)

    n, b, d, h = rng.randint(1, 4), rng.randint(1, 4), rng.randint(1, 5), rng.randint(1, 5)
    k = rng.randint(1, 3)
    if op_name == "lrp_linear":
        return lrp_linear, dict(x=t(n, d), weight=t(h, d), bias=t(h), relevance=t(k, n, h))
    if op_name == "lrp_lstm":
        steps = rng.randint(1, 4)
        return lrp_lstm, dict(x=t(steps, b, d), h0=t(b, h), c0=t(b, h), weight_ih=t(4 * h, d),
                              weight_hh=t(4 * h, h), bias_ih=t(4 * h), bias_hh=t(4 * h),
                              relevance_h=t(k, steps, b, h), relevance_c=t(k, steps, b, h))
    if op_name == "lrp_lstm_cell":
        return lrp_lstm_cell, dict(x=t(b, d), h_prev=t(b, h), c_prev=t(b, h), weight_ih=t(4 * h, d),
                                   weight_hh=t(4 * h, h), bias_ih=t(4 * h), bias_hh=t(4 * h),
                                   relevance_h=t(k, b, h), relevance_c=t(k, b, h))
    if op_name == "lrp_additive_attention":
        return lrp_additive_attention, dict(values=t(b, n, d), weights=torch.rand(b, n, dtype=torch.float64),
                                            relevance=t(k, b, d))
    heads, lq, lk = rng.randint(1, 3), rng.randint(1, 4), rng.randint(1, 4)
    return lrp_sdpa, dict(q=t(b, heads, lq, d), k=t(b, heads, lk, d), v=t(b, heads, lk, h),
                          relevance=t(k, b, heads, lq, h), attn_mask=torch.rand(lq, lk) > 0.3,
                          mode=rng.choice(["constant", "attnlrp"]))


def _mutate_tensor(tensor, rng):
    kind = rng.choice(["rank_up", "rank_down", "size", "empty", "dtype", "nan", "inf", "strided", "huge"])
    if kind == "rank_up":
        return tensor.unsqueeze(rng.randint(0, tensor.dim()))
    if kind == "rank_down":
        return tensor.reshape(-1) if tensor.dim() > 1 else tensor.sum()
    if kind == "size" and tensor.dim() > 0:
        dim = rng.randrange(tensor.dim())
        grow = torch.cat([tensor, tensor.narrow(dim, 0, 1)], dim) if tensor.size(dim) > 0 else tensor
        return grow if rng.random() < 0.5 or tensor.size(dim) < 2 else tensor.narrow(dim, 0, tensor.size(dim) - 1)
    if kind == "empty" and tensor.dim() > 0:
        return tensor.narrow(rng.randrange(tensor.dim()), 0, 0)
    if kind == "dtype":
        return tensor.to(rng.choice([torch.int64, torch.int32, torch.float16, torch.bfloat16, torch.float32,
                                     torch.bool, torch.complex64]))
    if kind in ("nan", "inf") and tensor.numel() > 0 and tensor.is_floating_point():
        flat = tensor.clone().reshape(-1)
        flat[rng.randrange(flat.numel())] = math.nan if kind == "nan" else -math.inf
        return flat.reshape(tensor.shape)
    if kind == "strided" and tensor.dim() >= 2:
        return tensor.transpose(0, 1).contiguous().transpose(0, 1)
    if kind == "huge" and tensor.is_floating_point():
        return tensor * 1e300
    return tensor.unsqueeze(0)


def _malformed_call(op_name, rng):
    op, arguments = _valid_arguments(op_name, rng)
    names = [name for name in arguments if name != "mode"]
    for _ in range(rng.randint(1, 2)):
        name = rng.choice(names)
        value = arguments[name]
        roll = rng.random()
        if isinstance(value, torch.Tensor) and roll < 0.85:
            arguments[name] = _mutate_tensor(value, rng)
        elif roll < 0.92:
            arguments[name] = None
        else:
            arguments[name] = rng.choice([3, "text", [1.0], -1.0, math.nan])
    if rng.random() < 0.2:
        arguments["eps"] = rng.choice([-1.0, math.nan, math.inf, 0.0, 1e-30])
    return op, arguments


@pytest.mark.parametrize("op_name", ["lrp_linear", "lrp_lstm", "lrp_lstm_cell", "lrp_additive_attention",
                                     "lrp_sdpa"])
def test_malformed_calls_raise_cleanly_or_return_finite_results(op_name):
    rng = random.Random(f"capxai-fuzz-{op_name}")
    outcomes = {"raised": 0, "finite": 0}
    for _ in range(CALLS_PER_OP):
        op, arguments = _malformed_call(op_name, rng)
        try:
            result = op(**arguments)
        except (TypeError, ValueError, RuntimeError, IndexError) as error:
            assert str(error), f"{op_name}: empty error message for {sorted(arguments)}"
            outcomes["raised"] += 1
            continue
        results = result if isinstance(result, tuple) else (result,)
        for tensor in results:
            assert torch.isfinite(tensor).all(), f"{op_name} returned non-finite values instead of raising"
        outcomes["finite"] += 1
    assert outcomes["raised"] > CALLS_PER_OP // 3, outcomes  # the fuzzer really produced malformed calls
