"""The paper's main captioner: adaptive attention with a visual sentinel (Lu et al. 2017, "Knowing when to look"),
as used by Sun et al. Two LSTMs; the first reads ``[h2_{t-1}; global feature; embedding]``; the sentinel
``s = sigmoid(W_x x + W_h h1_{t-1}) * tanh(c1)``; additive attention over the regions and the sentinel gives
``c_hat = beta s + (1 - beta) sum_k alpha_k V_k``; the second LSTM reads ``[c_hat; h1]``; logits
``W_o dropout(c_hat + h2)``."""
import torch
from torch import nn

import capxai.nn as cnn
from capxai.models.captioner import Captioner


class AdaptiveAttentionCaptioner(Captioner):
    """Activations per step (``DecoderTrace.activations``): ``x1`` (LSTM-1 input), ``h1``, ``c1``, ``sentinel_gate``,
    ``sentinel``, ``alpha [regions]``, ``beta``, ``context`` (c_hat), ``h2``, ``c2``.

    Args:
        vocab_size: words incl. specials.
        feature_dim: C of the encoder grid.
        hidden: H of both LSTMs, of the projected regions and of the embedding.
        attention_dim: size of the attention score space.
        dropout: before the output layer.
    """

    output_terms = ("context", "h2")  # the activations whose sum the output layer reads

    def __init__(self, vocab_size: int, feature_dim: int, hidden: int = 512, attention_dim: int = 512,
                 dropout: float = 0.5):
        super().__init__()
        self.vocab_size, self.feature_dim, self.hidden = vocab_size, feature_dim, hidden
        self.region_proj = nn.Linear(feature_dim, hidden)
        self.global_proj = nn.Linear(feature_dim, hidden)
        self.embedding = nn.Embedding(vocab_size, hidden)
        self.lstm1 = cnn.LSTMCell(3 * hidden, hidden)
        self.sentinel_input = nn.Linear(3 * hidden, hidden, bias=False)  # W_x
        self.sentinel_hidden = nn.Linear(hidden, hidden, bias=False)  # W_h
        self.attention = cnn.AdditiveAttention(hidden, hidden, attention_dim, sentinel=True)
        self.lstm2 = cnn.LSTMCell(2 * hidden, hidden)
        self.dropout = nn.Dropout(dropout)
        self.output = nn.Linear(hidden, vocab_size)

    def init_state(self, features):
        regions = torch.relu(self.region_proj(features))
        global_feature = torch.relu(self.global_proj(features.mean(1)))
        zeros = features.new_zeros(features.shape[0], self.hidden)
        return {"regions": regions, "projected_regions": self.attention.value_proj(regions),
                "global_feature": global_feature, "h1": zeros, "c1": zeros, "h2": zeros, "c2": zeros}

    def step(self, state, words):
        x1 = torch.cat([state["h2"], state["global_feature"], self.embedding(words)], dim=-1)
        h1, c1 = self.lstm1(x1, (state["h1"], state["c1"]))
        # the gate uses h1_{t-1}, as in training (the paper's fine-tuning code used h1_t: docs/LRP_RULES.md)
        sentinel_gate = torch.sigmoid(self.sentinel_input(x1) + self.sentinel_hidden(state["h1"]))
        sentinel = sentinel_gate * torch.tanh(c1)
        context, alpha, beta = self.attention(state["regions"], h1, sentinel, state["projected_regions"])
        h2, c2 = self.lstm2(torch.cat([context, h1], dim=-1), (state["h2"], state["c2"]))
        logits = self.output(self.dropout(context + h2))
        new_state = {**state, "h1": h1, "c1": c1, "h2": h2, "c2": c2}
        trace = {"x1": x1, "h1": h1, "c1": c1, "sentinel_gate": sentinel_gate, "sentinel": sentinel,
                 "alpha": alpha, "beta": beta, "context": context, "h2": h2, "c2": c2}
        return logits, new_state, trace
