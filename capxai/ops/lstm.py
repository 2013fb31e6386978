"""Signal-take-all LRP through LSTMs (Arras et al. 2017), as fused ops: one step, or the whole sequence."""
from typing import Optional, Tuple

import torch

Tensor = torch.Tensor


def lrp_lstm(x: Tensor, h0: Tensor, c0: Tensor, weight_ih: Tensor, weight_hh: Tensor, bias_ih: Optional[Tensor],
             bias_hh: Optional[Tensor], relevance_h: Tensor, relevance_c: Optional[Tensor] = None,
             eps: float = 0.01, bias_factor: float = 0.0) -> Tuple[Tensor, Tensor, Tensor]:
    """Relevance of an LSTM's inputs and initial state, the whole reverse-time loop in one call.

    docs/LRP_RULES.md, "LSTM cell": for t = T..1, ``Rh = Rh_in[t] + carry``; ``Rc = Rc_in[t] + carry + Rh`` (gate ``o``
    is a constant); ``Rc_prev = f c_{t-1} / stab(c_t) Rc`` and ``Rg = i g / stab(c_t) Rc`` (gates ``i, f`` get
    nothing); ``[Rx_t; Rh_{t-1}]`` by the epsilon rule through the g-rows of ``[W_ih W_hh]`` (pre-activation with
    both biases). The forward is recomputed once inside the op and shared by all K targets; a target carries no work
    at steps after its last non-zero injected relevance.

    Args:
        x: inputs ``[T, B, D]``.
        h0, c0: initial states ``[B, H]``.
        weight_ih: ``[4H, D]``, ``torch.nn.LSTM`` layout (gates i, f, g, o), e.g. ``lstm.weight_ih_l0``.
        weight_hh: ``[4H, H]``, the same layout.
        bias_ih, bias_hh: ``[4H]`` each, or None.
        relevance_h: relevance injected at each step's hidden state ``[T, B, H]``, or ``[K, T, B, H]`` for K
            targets (e.g. all T words of a caption).
        relevance_c: the same at the cell state, or None.
        eps: stabiliser ``>= 0``.
        bias_factor: share of absorbed relevance given back (1 = conservative).

    Returns:
        ``(relevance_x [(K,) T, B, D], relevance_h0 [(K,) B, H], relevance_c0 [(K,) B, H])``.
    """
    return torch.ops.capxai.lrp_lstm(x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, relevance_h, relevance_c,
                                     eps, bias_factor)


def lrp_lstm_cell(x: Tensor, h_prev: Tensor, c_prev: Tensor, weight_ih: Tensor, weight_hh: Tensor,
                  bias_ih: Optional[Tensor], bias_hh: Optional[Tensor], relevance_h: Tensor,
                  relevance_c: Optional[Tensor] = None, eps: float = 0.01,
                  bias_factor: float = 0.0) -> Tuple[Tensor, Tensor, Tensor]:
    """One step of :func:`lrp_lstm` (``torch.nn.LSTMCell`` layout).

    Args:
        x: ``[B, D]``.
        h_prev, c_prev: ``[B, H]``.
        weight_ih, weight_hh, bias_ih, bias_hh: as in :func:`lrp_lstm`.
        relevance_h, relevance_c: ``[B, H]`` or ``[K, B, H]`` (``relevance_c`` may be None).
        eps, bias_factor: as in :func:`lrp_lstm`.

    Returns:
        ``(relevance_x [(K,) B, D], relevance_h_prev [(K,) B, H], relevance_c_prev [(K,) B, H])``.
    """
    return torch.ops.capxai.lrp_lstm_cell(x, h_prev, c_prev, weight_ih, weight_hh, bias_ih, bias_hh, relevance_h,
                                          relevance_c, eps, bias_factor)
