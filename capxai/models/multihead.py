"""The paper's second captioner: one LSTM reading ``[embedding; mean feature]``; 8-head scaled dot-product
attention of ``W_q h`` over ``W_K V`` and ``W_V V``; gate ``sigmoid(W_gate h) * (W_c ctx)``; logits
``W_o dropout(gated context + h)``."""
import torch
from torch import nn

import capxai.nn as cnn
from capxai.models.captioner import Captioner


class MultiHeadCaptioner(Captioner):
    """Activations per step: ``x`` (LSTM input), ``h``, ``c``, ``attention [heads, regions]``, ``context``,
    ``gate``, ``gated``.

    Args:
        vocab_size: words incl. specials.
        feature_dim: C of the encoder grid.
        hidden: H, divisible by ``heads``.
        heads: attention heads (8 in the paper).
        dropout: before the output layer.
    """

    output_terms = ("gated", "h")  # the activations whose sum the output layer reads

    def __init__(self, vocab_size: int, feature_dim: int, hidden: int = 512, heads: int = 8, dropout: float = 0.5):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"MultiHeadCaptioner: hidden ({hidden}) must be divisible by heads ({heads})")
        self.vocab_size, self.feature_dim, self.hidden, self.heads = vocab_size, feature_dim, hidden, heads
        self.embedding = nn.Embedding(vocab_size, hidden)
        self.mean_proj = nn.Linear(feature_dim, hidden)
        self.lstm = cnn.LSTMCell(2 * hidden, hidden)
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(feature_dim, hidden)
        self.value = nn.Linear(feature_dim, hidden)
        self.context_proj = nn.Linear(hidden, hidden)  # W_c
        self.gate = nn.Linear(hidden, hidden)  # W_gate
        self.dropout = nn.Dropout(dropout)
        self.output = nn.Linear(hidden, vocab_size)

    def _split(self, tensor):  # [B, L, H] -> [B, heads, L, H / heads]
        return tensor.unflatten(-1, (self.heads, self.hidden // self.heads)).transpose(1, 2)

    def init_state(self, features):
        zeros = features.new_zeros(features.shape[0], self.hidden)
        return {"keys": self._split(self.key(features)), "values": self._split(self.value(features)),
                "mean_feature": self.mean_proj(features.mean(1)), "h": zeros, "c": zeros}

    def step(self, state, words):
        x = torch.cat([self.embedding(words), state["mean_feature"]], dim=-1)
        h, c = self.lstm(x, (state["h"], state["c"]))
        query = self._split(self.query(h).unsqueeze(1))  # [B, heads, 1, d]
        keys = state["keys"]
        with torch.no_grad():  # the weights themselves, for inspection; the context below carries the gradient
            attention = torch.softmax(query @ keys.transpose(-2, -1) / keys.shape[-1] ** 0.5, dim=-1)[:, :, 0]
        context = cnn.scaled_dot_product_attention(query, keys, state["values"]).transpose(1, 2).flatten(1)
        gate = torch.sigmoid(self.gate(h))
        gated = gate * self.context_proj(context)
        logits = self.output(self.dropout(gated + h))
        trace = {"x": x, "h": h, "c": c, "attention": attention, "context": context, "gate": gate, "gated": gated}
        return logits, {**state, "h": h, "c": c}, trace
