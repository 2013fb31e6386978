"""capxai.ops: fused LRP relevance ops (``torch.ops.capxai.*``) and their pure-PyTorch references.

This package imports nothing else of capxai, so it can be used on its own as a relevance-op library.
"""
from capxai._extension import cuda_built, op_names
from capxai.ops import autograd, batching, fake  # noqa: F401  (register the autograd, vmap and fake kernels)
from capxai.ops import reference
from capxai.ops.attention import lrp_additive_attention, lrp_sdpa
from capxai.ops.linear import lrp_linear
from capxai.ops.lstm import lrp_lstm, lrp_lstm_cell

__all__ = ["lrp_linear", "lrp_lstm", "lrp_lstm_cell", "lrp_additive_attention", "lrp_sdpa", "reference", "cuda_built",
           "op_names"]
