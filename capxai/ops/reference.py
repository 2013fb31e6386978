"""Pure-PyTorch reference of every capxai op: the plain, vectorised statement of docs/LRP_RULES.md.

The fused C++/CUDA kernels are tested against these functions. They are written for clarity, not speed, but are
vectorised over targets and batch so that they also serve as the "eager reference" in the benchmarks.
"""
import math

import torch
import torch.nn.functional as F


def sign_nonneg_as_plus(z: torch.Tensor) -> torch.Tensor:
    """sign(z) with sign(0) = +1 (docs/LRP_RULES.md, Notation)."""
    return torch.where(z >= 0, 1.0, -1.0).to(z.dtype)


def stabilize(z: torch.Tensor, eps: float) -> torch.Tensor:
    """stab(z) = z + eps * sign(z), sign(0) = +1 (docs/LRP_RULES.md, Notation)."""
    return z + eps * sign_nonneg_as_plus(z)


def lrp_linear_reference(x, weight, bias, relevance, eps=0.01, bias_factor=0.0):
    """Epsilon rule through ``z = x W^T + b`` (docs/LRP_RULES.md, "Linear / elementwise sum").

    Shapes: x [N, In], weight [Out, In], bias [Out] or None, relevance [N, Out] or [K, N, Out] -> [(K,) N, In].
    ``R_i = sum_j x_i W_ji R_j / stab(z_j)``; with ``bias_factor`` each input also gets
    ``bias_factor * sum_j (b_j + eps sign z_j) R_j / stab(z_j) / In``.
    """
    z = F.linear(x, weight, bias)
    ratio = relevance / stabilize(z, eps)
    result = x * (ratio @ weight)
    if bias_factor != 0.0 and x.shape[1] > 0:
        absorbed = eps * sign_nonneg_as_plus(z)
        if bias is not None:
            absorbed = absorbed + bias
        result = result + bias_factor * (ratio * absorbed).sum(-1, keepdim=True) / x.shape[1]
    return result


def _with_targets(relevance, had_targets):
    return relevance if had_targets else relevance.squeeze(0)


def _lstm_forward(x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh):
    """Plain LSTM forward (gate order i, f, g, o) returning per step (h_prev, c_prev, i, f, g, c, z_g)."""
    hidden = h0.shape[-1]
    h, c = h0, c0
    steps = []
    for x_t in x:
        z = F.linear(x_t, weight_ih, bias_ih) + F.linear(h, weight_hh, bias_hh)
        z_i, z_f, z_g, z_o = z.split(hidden, dim=-1)
        i, f, g, o = torch.sigmoid(z_i), torch.sigmoid(z_f), torch.tanh(z_g), torch.sigmoid(z_o)
        c_new = f * c + i * g
        steps.append((h, c, i, f, g, c_new, z_g))
        h, c = o * torch.tanh(c_new), c_new
    return steps


def lstm_g_branch(weight_ih, weight_hh, bias_ih, bias_hh):
    """The g-rows of ``[W_ih W_hh]`` ([H, D + H]) and their summed bias ([H] or None): the linear map the LSTM rule
    propagates through."""
    hidden = weight_hh.shape[1]
    g_rows = slice(2 * hidden, 3 * hidden)
    weight_g = torch.cat([weight_ih[g_rows], weight_hh[g_rows]], dim=1)
    biases = [b[g_rows] for b in (bias_ih, bias_hh) if b is not None]
    return weight_g, (sum(biases) if biases else None)


def lstm_backward_step(step, x_t, rel_h, rel_c, carry_h, carry_c, weight_g, bias_g, eps, bias_factor):
    """One reverse step of the LSTM rule for relevance ``[..., B, H]`` injected at (h_t, c_t).

    ``step`` is one entry of :func:`_lstm_forward`. Returns (relevance_x_t, carry_h, carry_c) for step t - 1.
    """
    h_prev, c_prev, i, f, g, c, _ = step
    rel_h = rel_h + carry_h
    rel_c = rel_c + carry_c + rel_h
    cell_ratio = rel_c / stabilize(c, eps)
    cell_share = bias_factor * eps * sign_nonneg_as_plus(c) / 2
    carry_c = (f * c_prev + cell_share) * cell_ratio
    rel_g = (i * g + cell_share) * cell_ratio
    x_and_h = torch.cat([x_t, h_prev], dim=-1)
    rel_inputs = lrp_linear_reference(x_and_h, weight_g, bias_g, rel_g, eps, bias_factor)
    n_in = x_t.shape[-1]
    return rel_inputs[..., :n_in], rel_inputs[..., n_in:], carry_c


def lrp_lstm_reference(x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, relevance_h, relevance_c=None,
                       eps=0.01, bias_factor=0.0):
    """Signal-take-all LRP through a whole LSTM sequence (docs/LRP_RULES.md, "LSTM cell", Arras et al.).

    Shapes: x [T, B, D], h0 / c0 [B, H], weight_ih [4H, D], weight_hh [4H, H], biases [4H] or None (torch
    ``nn.LSTM`` layout, gates i, f, g, o); relevance_h / relevance_c [(K,) T, B, H], injected at each step's hidden
    and cell state. Returns (relevance_x [(K,) T, B, D], relevance_h0 [(K,) B, H], relevance_c0 [(K,) B, H]).
    For t = T..1: Rh = Rh_in + carry; Rc = Rc_in + carry + Rh (gate o is a constant); epsilon rule over the two terms
    of c_t; the g-branch by the epsilon rule through the g-rows of [W_ih W_hh] (pre-activation with both biases).
    """
    had_targets = relevance_h.dim() == 4
    relevance_h = relevance_h if had_targets else relevance_h.unsqueeze(0)
    if relevance_c is None:
        relevance_c = torch.zeros_like(relevance_h)
    else:
        relevance_c = relevance_c if had_targets else relevance_c.unsqueeze(0)
    weight_g, bias_g = lstm_g_branch(weight_ih, weight_hh, bias_ih, bias_hh)
    steps = _lstm_forward(x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh)

    carry_h = torch.zeros_like(relevance_h[:, 0])
    carry_c = torch.zeros_like(relevance_h[:, 0])
    relevance_x = []
    for t in reversed(range(len(steps))):
        rel_x, carry_h, carry_c = lstm_backward_step(steps[t], x[t], relevance_h[:, t], relevance_c[:, t], carry_h,
                                                     carry_c, weight_g, bias_g, eps, bias_factor)
        relevance_x.append(rel_x)
    relevance_x = torch.stack(relevance_x[::-1], dim=1)
    return tuple(_with_targets(r, had_targets) for r in (relevance_x, carry_h, carry_c))


def lrp_lstm_cell_reference(x, h_prev, c_prev, weight_ih, weight_hh, bias_ih, bias_hh, relevance_h,
                            relevance_c=None, eps=0.01, bias_factor=0.0):
    """One step of :func:`lrp_lstm_reference`: x [B, D], states [B, H], relevance [(K,) B, H] ->
    (relevance_x [(K,) B, D], relevance_h_prev [(K,) B, H], relevance_c_prev [(K,) B, H])."""
    step_dim = 1 if relevance_h.dim() == 3 else 0
    relevance_c = None if relevance_c is None else relevance_c.unsqueeze(step_dim)
    rel_x, rel_h, rel_c = lrp_lstm_reference(x[None], h_prev, c_prev, weight_ih, weight_hh, bias_ih, bias_hh,
                                             relevance_h.unsqueeze(step_dim), relevance_c, eps, bias_factor)
    return rel_x.squeeze(step_dim), rel_h, rel_c


def lrp_additive_attention_reference(values, weights, relevance, eps=0.01, bias_factor=0.0):
    """Epsilon rule over the N values of ``ctx = sum_n alpha_n V_n``, weights constant (docs/LRP_RULES.md, "Additive
    (adaptive) attention"). values [B, N, D], weights [B, N], relevance [(K,) B, D] -> [(K,) B, N, D]."""
    weighted = weights.unsqueeze(-1) * values  # [B, N, D]: the N terms of each context
    context = weighted.sum(1)
    ratio = (relevance / stabilize(context, eps)).unsqueeze(-2)  # [(K,) B, 1, D]
    result = weighted * ratio
    if bias_factor != 0.0 and values.shape[1] > 0:
        result = result + bias_factor * eps * sign_nonneg_as_plus(context).unsqueeze(-2) / values.shape[1] * ratio
    return result


def sdpa_forward_reference(q, k, v, attn_mask=None, scale=None):
    """Scores, weights and output of scaled dot-product attention with masks as in torch's SDPA; masked pairs get
    weight 0 and score 0, a query with no allowed key gets weights 0.

    Returns (scores, weights, output, allowed [B, h, Lq, Lk] bool, mask_bias or None).
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    full = (q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    scores = q @ k.transpose(-2, -1) * scale
    allowed = torch.ones(full, dtype=torch.bool, device=q.device)
    mask_bias = None
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        allowed = attn_mask.expand(full)
    elif attn_mask is not None:
        allowed = (attn_mask != -math.inf).expand(full)
        mask_bias = torch.where(allowed, attn_mask.expand(full), torch.zeros((), dtype=q.dtype, device=q.device))
        scores = scores + mask_bias
    weights = torch.softmax(scores.masked_fill(~allowed, -math.inf), dim=-1).masked_fill(~allowed, 0.0)
    scores = scores.masked_fill(~allowed, 0.0)
    return scores, weights, weights @ v, allowed, mask_bias


def sdpa_value_rule(weights, v, output, relevance, allowed, eps, bias_factor):
    """Epsilon rule over the terms ``A_ij V_je`` of ``O_ie`` (the bias share only over allowed keys).

    Returns (relevance of each term summed over queries, i.e. R_V [K, B, h, Lk, dv], and summed over dv, i.e. R_A
    [K, B, h, Lq, Lk]); AttnLRP gives each half of these, the constant rule all of R_V.
    """
    ratio = relevance / stabilize(output, eps)  # [K, B, h, Lq, dv]
    relevance_v = torch.einsum("bhij,kbhie->kbhje", weights, ratio) * v
    relevance_a = torch.einsum("kbhie,bhje->kbhij", ratio, v) * weights
    if bias_factor != 0.0:
        allowed = allowed.to(v.dtype)
        per_key = bias_factor * eps / allowed.sum(-1, keepdim=True).clamp_min(1.0)  # [B, h, Lq, 1]
        share = sign_nonneg_as_plus(output) * per_key * ratio  # [K, B, h, Lq, dv]
        relevance_v = relevance_v + torch.einsum("bhij,kbhie->kbhje", allowed, share)
        relevance_a = relevance_a + allowed * share.sum(-1, keepdim=True)
    return relevance_v, relevance_a


def softmax_rule(scores, weights, relevance_weights):
    """AttnLRP's softmax rule: ``R_s_i = s_i (R_A_i - A_i sum_j R_A_j)`` on the scores ``s``."""
    return scores * (relevance_weights - weights * relevance_weights.sum(-1, keepdim=True))


def bilinear_score_rule(q, k, scores, relevance_scores, mask_bias, allowed, eps, bias_factor, scale):
    """Uniform rule through ``s_ij = sum_c q_ic k_jc * scale (+ mask bias)``: half of each term to q, half to k, by
    the epsilon rule with the score as denominator. Returns (R_q, R_k) [K, B, h, L, d]."""
    ratio = relevance_scores / stabilize(scores, eps)
    relevance_q = torch.einsum("kbhij,bhjc->kbhic", ratio, k) * q * scale
    relevance_k = torch.einsum("kbhij,bhic->kbhjc", ratio, q) * k * scale
    if bias_factor != 0.0 and q.shape[-1] > 0:
        absorbed = eps * sign_nonneg_as_plus(scores) + (0.0 if mask_bias is None else mask_bias)
        absorbed_ratio = ratio * absorbed * allowed * (bias_factor / q.shape[-1])
        relevance_q = relevance_q + absorbed_ratio.sum(-1, keepdim=True)
        relevance_k = relevance_k + absorbed_ratio.sum(-2).unsqueeze(-1)
    return relevance_q / 2, relevance_k / 2


def lrp_sdpa_reference(q, k, v, relevance, attn_mask=None, mode="constant", eps=0.01, bias_factor=0.0, scale=None):
    """LRP through multi-head scaled dot-product attention (docs/LRP_RULES.md, "Scaled dot-product attention").

    q [B, h, Lq, d], k [B, h, Lk, d], v [B, h, Lk, dv], relevance [(K,) B, h, Lq, dv], attn_mask as in
    ``torch.nn.functional.scaled_dot_product_attention``. Mode "constant" returns relevance_v; mode "attnlrp"
    returns (relevance_q, relevance_k, relevance_v).
    """
    had_targets = relevance.dim() == 5
    relevance = relevance if had_targets else relevance.unsqueeze(0)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores, weights, output, allowed, mask_bias = sdpa_forward_reference(q, k, v, attn_mask, scale)
    relevance_v, relevance_a = sdpa_value_rule(weights, v, output, relevance, allowed, eps, bias_factor)
    if mode == "constant":
        return _with_targets(relevance_v, had_targets)
    relevance_scores = softmax_rule(scores, weights, relevance_a / 2)
    relevance_q, relevance_k = bilinear_score_rule(q, k, scores, relevance_scores, mask_bias, allowed, eps,
                                                   bias_factor, scale)
    return tuple(_with_targets(r, had_targets) for r in (relevance_q, relevance_k, relevance_v / 2))
