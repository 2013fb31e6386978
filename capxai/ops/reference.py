"""Pure-PyTorch reference of every capxai op: the plain, vectorised statement of LRP_RULES.md.

The fused C++/CUDA kernels are tested against these functions. They are written for clarity, not speed, but are
vectorised over targets and batch so that they also serve as the "eager reference" in the benchmarks.
"""
import torch
import torch.nn.functional as F


def sign_nonneg_as_plus(z: torch.Tensor) -> torch.Tensor:
    """sign(z) with sign(0) = +1 (LRP_RULES.md, Notation)."""
    return torch.where(z >= 0, 1.0, -1.0).to(z.dtype)


def stabilize(z: torch.Tensor, eps: float) -> torch.Tensor:
    """stab(z) = z + eps * sign(z), sign(0) = +1 (LRP_RULES.md, Notation)."""
    return z + eps * sign_nonneg_as_plus(z)


def lrp_linear_reference(x, weight, bias, relevance, eps=0.01, bias_factor=0.0):
    """Epsilon rule through ``z = x W^T + b`` (LRP_RULES.md, "Linear / elementwise sum").

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
    """Signal-take-all LRP through a whole LSTM sequence (LRP_RULES.md, "LSTM cell", Arras et al.).

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
