"""A third captioner: a transformer decoder over the feature grid (pre-LayerNorm; N layers of masked self-attention,
cross-attention to the regions and an MLP), built from capxai.nn's attention and ordinary layers, so that the
generic LRP path explains it with no code of its own (docs/LRP_RULES.md, "The generic path").

Decoding runs one word at a time through ``step`` like the paper's captioners: each layer keeps the keys and values
of the words so far (a cache in the state), so a step attends to every earlier word and never to a later one, the
causal mask by construction; the regions' keys and values are projected once, in ``init_state``.
"""
import math

import torch
from torch import nn

import capxai.nn as cnn
from capxai.models.captioner import Captioner, DecoderTrace, steps_needed


class _Attention(nn.Module):
    """Multi-head attention of queries over keys and values, projections as linear layers, attention by
    ``capxai.nn.scaled_dot_product_attention`` (fused relevance inside ``capxai.lrp()``)."""

    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value, self.out = (nn.Linear(hidden, hidden) for _ in range(4))

    def split(self, tensor):  # [B, L, H] -> [B, heads, L, H / heads]
        return tensor.unflatten(-1, (self.heads, -1)).transpose(1, 2)

    def attend(self, query, keys, values, mask=None):
        """``query [B, Lq, H]`` over ``keys, values [B, heads, L, d]`` -> ``[B, Lq, H]`` (``mask``: True = may
        attend, broadcast to ``[B, heads, Lq, L]``)."""
        attended = cnn.scaled_dot_product_attention(self.split(self.query(query)), keys, values, mask)
        return self.out(attended.transpose(1, 2).flatten(2))


class _Layer(nn.Module):
    def __init__(self, hidden: int, heads: int, mlp: int, activation: str, dropout: float):
        super().__init__()
        self.self_norm, self.cross_norm, self.mlp_norm = (nn.LayerNorm(hidden) for _ in range(3))
        self.self_attention, self.cross_attention = _Attention(hidden, heads), _Attention(hidden, heads)
        self.mlp_in, self.mlp_out = nn.Linear(hidden, mlp), nn.Linear(mlp, hidden)
        self.activation = nn.GELU() if activation == "gelu" else nn.ReLU()
        self.dropout = nn.Dropout(dropout)


class TransformerCaptioner(Captioner):
    """Activations per step: ``attention [heads, regions]`` (the last layer's cross-attention weights, what the
    attention baseline shows) and ``hidden`` (the last layer's normalised output, which ``output`` reads).

    Args:
        vocab_size: words incl. specials.
        feature_dim: C of the encoder grid.
        hidden: H, divisible by ``heads``.
        layers: decoder layers.
        heads: attention heads.
        mlp: width of each layer's MLP (0: 4 H).
        activation: "gelu" or "relu".
        dropout: dropout rate.
        max_positions: the longest caption + 1 it can decode.
    """

    output_terms = None  # the output layer reads one activation: LRP-inference fine-tuning does not apply yet

    def __init__(self, vocab_size: int, feature_dim: int, hidden: int = 256, layers: int = 2, heads: int = 4,
                 mlp: int = 0, activation: str = "gelu", dropout: float = 0.1, max_positions: int = 64):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"TransformerCaptioner: hidden ({hidden}) must be divisible by heads ({heads})")
        if activation not in ("gelu", "relu"):
            raise ValueError(f"TransformerCaptioner: activation must be 'gelu' or 'relu', got {activation!r}")
        self.vocab_size, self.feature_dim, self.hidden, self.heads = vocab_size, feature_dim, hidden, heads
        self.embedding = nn.Embedding(vocab_size, hidden)
        self.positions = nn.Parameter(torch.randn(max_positions, hidden) * 0.02)
        self.memory_proj, self.memory_norm = nn.Linear(feature_dim, hidden), nn.LayerNorm(hidden)
        self.layers = nn.ModuleList(_Layer(hidden, heads, mlp or 4 * hidden, activation, dropout)
                                    for _ in range(layers))
        self.final_norm = nn.LayerNorm(hidden)
        self.dropout = nn.Dropout(dropout)
        self.output = nn.Linear(hidden, vocab_size)

    def init_state(self, features):
        memory = self.memory_norm(self.memory_proj(features))
        state = {}
        head_dim = self.hidden // self.heads
        for index, layer in enumerate(self.layers):
            cross = layer.cross_attention
            state[f"memory_keys{index}"] = cross.split(cross.key(memory))
            state[f"memory_values{index}"] = cross.split(cross.value(memory))
            empty = features.new_zeros(features.shape[0], self.heads, 0, head_dim)
            state[f"keys{index}"], state[f"values{index}"] = empty, empty
        return state

    def forward(self, features, captions, pad: int = 0) -> DecoderTrace:
        """Teacher forcing of all positions at once (a causal mask in place of the cache; what training runs):
        equal to ``step`` run position by position (tested); positions after a row's last word are 0, as in
        :meth:`Captioner.forward`."""
        self.check_teacher_forcing(features, captions)
        steps = captions.shape[1] - 1
        if steps > self.positions.shape[0]:
            raise ValueError(f"TransformerCaptioner: {steps} steps are past max_positions ({self.positions.shape[0]})")
        state = self.init_state(features)
        x = self.embedding(captions[:, :-1]) + self.positions[:steps]  # [B, T, H]
        causal = torch.ones(steps, steps, dtype=torch.bool, device=captions.device).tril()
        for index, layer in enumerate(self.layers):
            attention = layer.self_attention
            normed = layer.self_norm(x)
            x = x + layer.dropout(attention.attend(normed, attention.split(attention.key(normed)),
                                                   attention.split(attention.value(normed)), causal))
            cross_input = layer.cross_norm(x)
            x = x + layer.dropout(layer.cross_attention.attend(cross_input, state[f"memory_keys{index}"],
                                                               state[f"memory_values{index}"]))
            x = x + layer.dropout(layer.mlp_out(layer.activation(layer.mlp_in(layer.mlp_norm(x)))))
        hidden = self.final_norm(x)
        logits = self.output(self.dropout(hidden))
        weights = self._cross_weights(cross_input, state).transpose(1, 2)  # [B, T, heads, regions]
        real = (torch.arange(steps, device=captions.device) < steps_needed(captions, pad).unsqueeze(1)).unsqueeze(-1)
        return DecoderTrace(logits * real, {"attention": weights * real.unsqueeze(-1), "hidden": hidden * real})

    def _cross_weights(self, cross_input, state):
        """The last layer's cross-attention weights ``[B, heads, Lq, regions]`` (for the attention baseline)."""
        last = self.layers[-1]
        with torch.no_grad():
            query = last.cross_attention.split(last.cross_attention.query(cross_input))
            keys = state[f"memory_keys{len(self.layers) - 1}"]
            return torch.softmax(query @ keys.transpose(-2, -1) / math.sqrt(keys.shape[-1]), dim=-1)

    def step(self, state, words):
        position = state["keys0"].shape[2]
        if position >= self.positions.shape[0]:
            raise ValueError(f"TransformerCaptioner: step {position + 1} is past max_positions "
                             f"({self.positions.shape[0]})")
        x = (self.embedding(words) + self.positions[position]).unsqueeze(1)  # [B, 1, H]
        new_state = dict(state)
        for index, layer in enumerate(self.layers):
            attention = layer.self_attention
            normed = layer.self_norm(x)
            keys = torch.cat([state[f"keys{index}"], attention.split(attention.key(normed))], dim=2)
            values = torch.cat([state[f"values{index}"], attention.split(attention.value(normed))], dim=2)
            new_state[f"keys{index}"], new_state[f"values{index}"] = keys, values
            x = x + layer.dropout(attention.attend(normed, keys, values))
            cross_input = layer.cross_norm(x)
            x = x + layer.dropout(layer.cross_attention.attend(cross_input, state[f"memory_keys{index}"],
                                                               state[f"memory_values{index}"]))
            x = x + layer.dropout(layer.mlp_out(layer.activation(layer.mlp_in(layer.mlp_norm(x)))))
        hidden = self.final_norm(x).squeeze(1)
        logits = self.output(self.dropout(hidden))
        return logits, new_state, {"attention": self._cross_weights(cross_input, state)[:, :, 0], "hidden": hidden}
