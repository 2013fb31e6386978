"""LRP through attention, as fused ops: additive (adaptive) attention and multi-head scaled dot-product attention."""
from typing import Optional, Tuple, Union

import torch

Tensor = torch.Tensor
SDPA_MODES = ("constant", "attnlrp")


def lrp_additive_attention(values: Tensor, weights: Tensor, relevance: Tensor, eps: float = 0.01,
                           bias_factor: float = 0.0) -> Tensor:
    """Relevance of the values of ``ctx = sum_n weights[n] * values[n]``, attention weights constant.

    docs/LRP_RULES.md, "Additive (adaptive) attention": ``R_V[n, d] = alpha_n V_nd / stab(ctx_d) * R_ctx_d``; with
    ``bias_factor`` each value also gets ``bias_factor * eps * sign(ctx_d) / N`` of it. No relevance reaches the
    scores or the query. A visual sentinel (Lu et al. 2017) is simply one more value.

    Args:
        values: ``[B, N, D]``.
        weights: the attention weights ``[B, N]``.
        relevance: relevance of the context ``[B, D]``, or ``[K, B, D]`` for K targets.
        eps, bias_factor: the stabiliser and the share of absorbed relevance given back (1 = conservative).

    Returns:
        ``[B, N, D]`` or ``[K, B, N, D]``.
    """
    return torch.ops.capxai.lrp_additive_attention(values, weights, relevance, eps, bias_factor)


def lrp_sdpa(q: Tensor, k: Tensor, v: Tensor, relevance: Tensor, attn_mask: Optional[Tensor] = None,
             mode: str = "constant", eps: float = 0.01, bias_factor: float = 0.0,
             scale: Optional[float] = None) -> Union[Tensor, Tuple[Tensor, Tensor, Tensor]]:
    """Relevance through multi-head scaled dot-product attention ``softmax(q k^T * scale + mask) v``.

    docs/LRP_RULES.md, "Scaled dot-product attention". Mode ``"constant"`` (the paper): attention weights are constants,
    ``R_V[j, e] = sum_i A_ij V_je / stab(O_ie) R_ie`` for every head. Mode ``"attnlrp"`` (Achtibat et al. 2024):
    ``A V`` and ``q k^T`` by the uniform bilinear rule, the softmax by AttnLRP's rule. Masked pairs get nothing.

    Args:
        q: queries ``[B, h, Lq, d]``.
        k: keys ``[B, h, Lk, d]``.
        v: values ``[B, h, Lk, dv]``.
        relevance: relevance of the output ``[B, h, Lq, dv]``, or ``[K, B, h, Lq, dv]`` for K targets.
        attn_mask: as in ``torch.nn.functional.scaled_dot_product_attention`` (bool, True = attend, or additive
            float, broadcastable to ``[B, h, Lq, Lk]``), or None.
        mode: ``"constant"`` or ``"attnlrp"``.
        eps, bias_factor: the stabiliser and the share of absorbed relevance given back (1 = conservative).
        scale: defaults to ``1 / sqrt(d)``.

    Returns:
        Mode ``"constant"``: ``relevance_v [(K,) B, h, Lk, dv]``; mode ``"attnlrp"``: ``(relevance_q,
        relevance_k, relevance_v)``.
    """
    if mode == "constant":
        return torch.ops.capxai.lrp_sdpa(q, k, v, relevance, attn_mask, eps, bias_factor, scale)
    if mode == "attnlrp":
        return torch.ops.capxai.lrp_sdpa_attnlrp(q, k, v, relevance, attn_mask, eps, bias_factor, scale)
    raise ValueError(f"lrp_sdpa: mode must be one of {SDPA_MODES}, got {mode!r}")
