"""Autograd functions whose forward is the plain computation and whose backward is a relevance rule (a capxai
op). The capxai.nn modules use them inside ``capxai.lrp()``; each backward receives the relevance of the outputs in
the gradient slot and returns the relevance of the inputs there. Inputs that receive no relevance by the rule (attention
weights, q and k in "constant" mode) get zeros rather than None, so that rules hooked on the layers producing them
(e.g. Zennit's) see a tensor."""
import contextlib

import torch

from capxai import ops


def _or_zeros(relevance, like):
    return torch.zeros_like(like) if relevance is None else relevance


class LSTMCellRelevance(torch.autograd.Function):
    """One LSTM step (``torch.nn.LSTMCell``); backward: ``lrp_lstm_cell``."""

    @staticmethod
    def forward(ctx, x, h_prev, c_prev, weight_ih, weight_hh, bias_ih, bias_hh, settings):
        h, c = torch._VF.lstm_cell(x, (h_prev, c_prev), weight_ih, weight_hh, bias_ih, bias_hh)
        ctx.save_for_backward(x, h_prev, c_prev, weight_ih, weight_hh, bias_ih, bias_hh)
        ctx.settings = settings
        return h, c

    @staticmethod
    def backward(ctx, relevance_h, relevance_c):
        x, h_prev, c_prev, weight_ih, weight_hh, bias_ih, bias_hh = ctx.saved_tensors
        relevance_h = _or_zeros(relevance_h, h_prev)
        relevance_x, relevance_h_prev, relevance_c_prev = ops.lrp_lstm_cell(
            x, h_prev, c_prev, weight_ih, weight_hh, bias_ih, bias_hh, relevance_h, relevance_c,
            eps=ctx.settings.eps, bias_factor=ctx.settings.bias_factor)
        return relevance_x, relevance_h_prev, relevance_c_prev, None, None, None, None, None


@contextlib.contextmanager
def _native_lstm_if_onednn_cannot(x):
    """oneDNN has no half-precision LSTM primitive on CPUs without AVX-512 (plain ``nn.LSTM`` under CPU autocast
    fails there: "could not create a primitive descriptor"): use ATen's own LSTM for that call instead."""
    native = (x.device.type == "cpu" and torch.is_autocast_enabled("cpu")
              and torch.backends.cpu.get_cpu_capability() != "AVX512" and torch._C._get_mkldnn_enabled())
    if native:
        torch._C._set_mkldnn_enabled(False)
    try:
        yield
    finally:
        if native:
            torch._C._set_mkldnn_enabled(True)


class LSTMLayerRelevance(torch.autograd.Function):
    """One LSTM layer over a sequence ``[T, B, D]``; backward: ``lrp_lstm`` (relevance of every step's output,
    plus that of the final states, injected in one call)."""

    @staticmethod
    def forward(ctx, x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, settings):
        weights = [w for w in (weight_ih, weight_hh, bias_ih, bias_hh) if w is not None]
        with _native_lstm_if_onednn_cannot(x):
            output, h_n, c_n = torch._VF.lstm(x, (h0[None], c0[None]), weights, bias_ih is not None, 1, 0.0, False,
                                              False, False)
        ctx.save_for_backward(x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh)
        ctx.settings = settings
        return output, h_n[0], c_n[0]

    @staticmethod
    def backward(ctx, relevance_output, relevance_h_n, relevance_c_n):
        x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh = ctx.saved_tensors
        steps, batch, hidden = x.shape[0], x.shape[1], h0.shape[-1]
        relevance_h = _or_zeros(relevance_output, x.new_empty(steps, batch, hidden)).clone()
        if relevance_h_n is not None:
            relevance_h[-1] += relevance_h_n
        relevance_c = None
        if relevance_c_n is not None:
            relevance_c = torch.zeros_like(relevance_h)
            relevance_c[-1] = relevance_c_n
        relevance_x, relevance_h0, relevance_c0 = ops.lrp_lstm(
            x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, relevance_h, relevance_c, eps=ctx.settings.eps,
            bias_factor=ctx.settings.bias_factor)
        return relevance_x, relevance_h0, relevance_c0, None, None, None, None, None


class WeightedSumRelevance(torch.autograd.Function):
    """``context = sum_n weights[n] * values[n]`` (``[B, N, D]``, ``[B, N]`` -> ``[B, D]``); backward:
    ``lrp_additive_attention``. The weights are constants: they receive no relevance."""

    @staticmethod
    def forward(ctx, values, weights, settings):
        ctx.save_for_backward(values, weights)
        ctx.settings = settings
        return torch.bmm(weights.unsqueeze(1), values).squeeze(1)

    @staticmethod
    def backward(ctx, relevance_context):
        values, weights = ctx.saved_tensors
        relevance_values = ops.lrp_additive_attention(values, weights, relevance_context, eps=ctx.settings.eps,
                                                      bias_factor=ctx.settings.bias_factor)
        return relevance_values, torch.zeros_like(weights), None


class SDPARelevance(torch.autograd.Function):
    """``scaled_dot_product_attention(q, k, v, attn_mask, scale=scale)``; backward: ``lrp_sdpa`` in the settings' mode
    ("constant": relevance only to v; "attnlrp": to q, k and v)."""

    @staticmethod
    def forward(ctx, q, k, v, attn_mask, settings, scale=None):
        ctx.save_for_backward(q, k, v, attn_mask)
        ctx.settings, ctx.scale = settings, scale
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)

    @staticmethod
    def backward(ctx, relevance_output):
        q, k, v, attn_mask = ctx.saved_tensors
        settings = ctx.settings
        result = ops.lrp_sdpa(q, k, v, relevance_output, attn_mask=attn_mask, mode=settings.mode, eps=settings.eps,
                              bias_factor=settings.bias_factor, scale=ctx.scale)
        if settings.mode == "constant":
            return torch.zeros_like(q), torch.zeros_like(k), result, None, None, None
        relevance_q, relevance_k, relevance_v = result
        return relevance_q, relevance_k, relevance_v, None, None, None


class LinearRelevance(torch.autograd.Function):
    """``F.linear(x, weight, bias)``; backward: ``lrp_linear`` (epsilon rule) over any leading dims of x."""

    @staticmethod
    def forward(ctx, x, weight, bias, settings):
        ctx.save_for_backward(x, weight, bias)
        ctx.settings = settings
        return torch.nn.functional.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, relevance_output):
        x, weight, bias = ctx.saved_tensors
        rows = x.reshape(-1, x.shape[-1])
        relevance = ops.lrp_linear(rows, weight, bias, relevance_output.reshape(-1, relevance_output.shape[-1]),
                                   eps=ctx.settings.eps, bias_factor=ctx.settings.bias_factor)
        return relevance.reshape(x.shape), None, None, None
