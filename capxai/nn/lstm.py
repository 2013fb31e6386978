"""Drop-in LSTMs: ``torch.nn.LSTMCell`` / ``torch.nn.LSTM`` (same parameters, state_dict keys and forward) whose
backward, inside ``capxai.lrp()``, is the LSTM rule of docs/LRP_RULES.md computed by the fused ``lrp_lstm`` ops."""
import torch
from torch import nn

from capxai.nn.context import active_settings
from capxai.nn.functions import LSTMCellRelevance, LSTMLayerRelevance


class LSTMCell(nn.LSTMCell):
    """``torch.nn.LSTMCell`` whose backward returns relevance inside ``capxai.lrp()``.

    Shapes as torch: input ``[B, D]`` or ``[D]``, states ``[B, H]`` or ``[H]``; returns ``(h', c')``.
    """

    def forward(self, input, hx=None):
        settings = active_settings()
        if settings is None:
            return super().forward(input, hx)
        batched = input.dim() == 2
        x = input if batched else input.unsqueeze(0)
        if hx is None:
            zeros = x.new_zeros(x.shape[0], self.hidden_size)
            hx = (zeros, zeros)
        h_prev, c_prev = (hx if batched else (hx[0].unsqueeze(0), hx[1].unsqueeze(0)))
        h, c = LSTMCellRelevance.apply(x, h_prev, c_prev, self.weight_ih, self.weight_hh, self.bias_ih,
                                       self.bias_hh, settings)
        return (h, c) if batched else (h.squeeze(0), c.squeeze(0))


class LSTM(nn.LSTM):
    """``torch.nn.LSTM`` (single or multi-layer, ``batch_first``) whose backward returns relevance inside
    ``capxai.lrp()``: per layer one ``lrp_lstm`` call for the whole sequence, with the relevance of every step's
    output and of the final states injected at once.

    Inside ``capxai.lrp()``, bidirectional LSTMs, ``proj_size`` and PackedSequence inputs are not supported yet
    (a ValueError / TypeError says so); outside it, everything torch supports works.
    """

    def _check_relevance_support(self, input):
        if isinstance(input, nn.utils.rnn.PackedSequence):
            raise TypeError("capxai.nn.LSTM: PackedSequence input is not supported inside capxai.lrp(); pad the "
                            "batch (torch.nn.utils.rnn.pad_packed_sequence) instead")
        if self.bidirectional or self.proj_size > 0:
            raise ValueError("capxai.nn.LSTM: bidirectional LSTMs and proj_size > 0 are not supported inside "
                             "capxai.lrp() yet")

    def forward(self, input, hx=None):
        settings = active_settings()
        if settings is None:
            return super().forward(input, hx)
        self._check_relevance_support(input)
        batched = input.dim() == 3
        x = input if batched else input.unsqueeze(1)
        if batched and self.batch_first:
            x = x.transpose(0, 1)
        if hx is None:
            zeros = x.new_zeros(self.num_layers, x.shape[1], self.hidden_size)
            hx = (zeros, zeros)
        elif not batched:
            hx = (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
        final_h, final_c = [], []
        for layer in range(self.num_layers):
            weights = [getattr(self, f"{name}_l{layer}", None)
                       for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            x, h_n, c_n = LSTMLayerRelevance.apply(x, hx[0][layer], hx[1][layer], *weights, settings)
            final_h.append(h_n)
            final_c.append(c_n)
            if layer < self.num_layers - 1 and self.dropout > 0:
                x = nn.functional.dropout(x, self.dropout, self.training)
        h_n, c_n = torch.stack(final_h), torch.stack(final_c)
        if not batched:
            return x.squeeze(1), (h_n.squeeze(1), c_n.squeeze(1))
        return (x.transpose(0, 1) if self.batch_first else x), (h_n, c_n)
