"""Fake (meta) kernels: output shapes without computing, so the ops trace under torch.compile and FakeTensor.

The C++ library names this module (``set_python_module``), so torch imports it when it needs a fake kernel.
"""
import torch


@torch.library.register_fake("capxai::lrp_linear")
def _lrp_linear_fake(x, weight, bias, relevance, eps=0.01, bias_factor=0.0):
    torch._check(x.dim() == 2, lambda: f"lrp_linear: x must be [N, In], got {list(x.shape)}")
    torch._check(relevance.dim() in (2, 3),
                 lambda: f"lrp_linear: relevance must be [N, Out] or [K, N, Out], got {list(relevance.shape)}")
    return relevance.new_empty((*relevance.shape[:-1], x.shape[1]))


@torch.library.register_fake("capxai::lrp_lstm")
def _lrp_lstm_fake(x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, relevance_h, relevance_c=None, eps=0.01,
                   bias_factor=0.0):
    torch._check(x.dim() == 3, lambda: f"lrp_lstm: x must be [T, B, D], got {list(x.shape)}")
    torch._check(relevance_h.dim() in (3, 4),
                 lambda: f"lrp_lstm: relevance_h must be [T, B, H] or [K, T, B, H], got {list(relevance_h.shape)}")
    targets = relevance_h.shape[:-3]
    return (relevance_h.new_empty((*targets, *x.shape)), relevance_h.new_empty((*targets, *h0.shape)),
            relevance_h.new_empty((*targets, *c0.shape)))


@torch.library.register_fake("capxai::lrp_additive_attention")
def _lrp_additive_attention_fake(values, weights, relevance, eps=0.01, bias_factor=0.0):
    torch._check(values.dim() == 3,
                 lambda: f"lrp_additive_attention: values must be [B, N, D], got {list(values.shape)}")
    return relevance.new_empty((*relevance.shape[:-2], *values.shape))


def _sdpa_shape(q, k, v, relevance, op):
    torch._check(q.dim() == 4 and k.dim() == 4 and v.dim() == 4, lambda: f"{op}: q, k, v must be 4-d")
    torch._check(relevance.dim() in (4, 5), lambda: f"{op}: relevance must be [(K,) B, h, Lq, dv]")
    return tuple(relevance.shape[:-4])


@torch.library.register_fake("capxai::lrp_sdpa")
def _lrp_sdpa_fake(q, k, v, relevance, attn_mask=None, eps=0.01, bias_factor=0.0, scale=None):
    return relevance.new_empty((*_sdpa_shape(q, k, v, relevance, "lrp_sdpa"), *v.shape))


@torch.library.register_fake("capxai::lrp_sdpa_attnlrp")
def _lrp_sdpa_attnlrp_fake(q, k, v, relevance, attn_mask=None, eps=0.01, bias_factor=0.0, scale=None):
    targets = _sdpa_shape(q, k, v, relevance, "lrp_sdpa_attnlrp")
    return (relevance.new_empty((*targets, *q.shape)), relevance.new_empty((*targets, *k.shape)),
            relevance.new_empty((*targets, *v.shape)))
