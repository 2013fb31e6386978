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
