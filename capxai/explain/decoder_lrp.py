"""LRP through the decoders of the paper's two captioners, for all words of all captions in one reverse-time sweep
(docs/LRP_RULES.md). Each explained word is one target of the fused ops (their leading K dimension), so a caption costs
about one sweep over its steps, not one sweep per word: target k (the word predicted at step k) only carries
relevance at steps <= k, so step t runs on the targets k >= t alone.

Start (docs/LRP_RULES.md, Notation): ``R_logits[t] = onehot(w) * logits[t, w]`` for the word w at step t.
"""
import dataclasses
from typing import Optional

import torch

from capxai import ops
from capxai.explain.forward import ForwardPass
from capxai.models import AdaptiveAttentionCaptioner, MultiHeadCaptioner


@dataclasses.dataclass
class DecoderRelevance:
    """Per target k (the word predicted at step k) and caption b: ``features [K, B, regions, C]`` (the feature grid),
    ``words [K, B, T]`` (the embedding of the word fed at each step, summed over its dimensions; zero after step k)
    and ``initial_state [K, B]`` (the decoder's initial states; non-zero only with a bias share)."""

    features: torch.Tensor
    words: torch.Tensor
    initial_state: torch.Tensor


@dataclasses.dataclass(frozen=True)
class Rules:
    eps: float = 0.01
    bias_factor: float = 0.0


def start_relevance(forward: ForwardPass, tokens: torch.Tensor, mask: torch.Tensor,
                    contrast: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``[T, B, V]``: at step t, the raw logit of the word explained there on its own index (zero at padding);
    with ``contrast [B, T]``, minus the contrast word's logit on its index (the two cancel where they are the same
    word): the start of "why this word rather than that one", linear in the two single-word starts."""
    logits = forward.logits.transpose(0, 1)  # [T, B, V]
    return logit_start(logits, tokens.t(), mask.t(), None if contrast is None else contrast.t())


def logit_start(logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor,
                contrast: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``logits [..., V]``, ``tokens`` / ``mask`` / ``contrast`` ``[...]``: the logit of each token on its index,
    minus the contrast's on its own, zero where the mask is."""
    weight = mask.unsqueeze(-1).to(logits.dtype)
    start = torch.zeros_like(logits).scatter_(-1, tokens.unsqueeze(-1),
                                              logits.gather(-1, tokens.unsqueeze(-1)) * weight)
    if contrast is not None:
        index = contrast.unsqueeze(-1)
        start.scatter_add_(-1, index, -logits.gather(-1, index) * weight)
    return start


def two_term_relevance(first: torch.Tensor, second: torch.Tensor, relevance: torch.Tensor, rules: Rules):
    """The epsilon rule over the two terms of ``first + second`` (``[N, D]`` each; relevance ``[(K,) N, D]``), as
    the attention op with unit weights: same rule, same bias share (docs/LRP_RULES.md, elementwise sum)."""
    values = torch.stack([first, second], dim=1)
    shares = ops.lrp_additive_attention(values, values.new_ones(values.shape[:2]), relevance, rules.eps,
                                        rules.bias_factor)
    return shares[..., 0, :], shares[..., 1, :]


def output_layer_relevance(layer: torch.nn.Linear, first: torch.Tensor, second: torch.Tensor, start: torch.Tensor,
                    rules: Rules):
    """Output layer ``W_o (first + second) + b_o`` for every step at once (target t at step t): the epsilon rule
    through ``W_o`` (bias in the denominator), then over the two terms of the sum. ``[T, B, H]`` each."""
    steps, batch, hidden = first.shape
    total = (first + second).reshape(steps * batch, hidden)
    relevance_total = ops.lrp_linear(total, layer.weight, layer.bias, start.reshape(steps * batch, -1), rules.eps,
                                     rules.bias_factor)
    relevance_first, relevance_second = two_term_relevance(first.reshape(-1, hidden), second.reshape(-1, hidden),
                                                      relevance_total, rules)
    return relevance_first.reshape(steps, batch, hidden), relevance_second.reshape(steps, batch, hidden)


def _through_mean(features: torch.Tensor, layer: torch.nn.Linear, relevance: torch.Tensor, rules: Rules):
    """``layer(mean_k F_k)``: the epsilon rule through the layer, then through the mean (numerators ``F_k / K``,
    denominator the mean): ``[K, B, C']`` -> ``[K, B, regions, C]``."""
    relevance_mean = ops.lrp_linear(features.mean(1), layer.weight, layer.bias, relevance, rules.eps,
                                    rules.bias_factor)
    uniform = features.new_full(features.shape[:2], 1.0 / features.shape[1])
    return ops.lrp_additive_attention(features, uniform, relevance_mean, rules.eps, rules.bias_factor)


def _through_region_layer(features: torch.Tensor, layer: torch.nn.Linear, relevance: torch.Tensor, rules: Rules):
    """``layer(F_k)`` for every region (a ReLU after it passes relevance): ``[K, B, regions, H]`` -> ``[K, B,
    regions, C]``."""
    targets, batch, regions, _ = relevance.shape
    flat = ops.lrp_linear(features.reshape(batch * regions, -1), layer.weight, layer.bias,
                          relevance.reshape(targets, batch * regions, -1), rules.eps, rules.bias_factor)
    return flat.reshape(targets, batch, regions, -1)


def _previous(states: torch.Tensor) -> torch.Tensor:
    """``[T, B, H]`` states -> the state before each step (zeros before the first)."""
    return torch.cat([torch.zeros_like(states[:1]), states[:-1]])


def _lstm_weights(cell):
    return cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh


def adaptive_relevance(model: AdaptiveAttentionCaptioner, features: torch.Tensor, forward: ForwardPass,
                       start: torch.Tensor, rules: Rules) -> DecoderRelevance:
    """The adaptive-attention decoder (docs/LRP_RULES.md: LSTM, additive attention with the sentinel's two stages,
    the global feature). The two LSTMs feed each other (``h2_{t-1}`` enters LSTM-1, ``h1_t`` LSTM-2), so the sweep
    goes step by step, each op called once per step for all active targets."""
    hidden = model.hidden
    x1, h1, c1 = forward.stacked("x1"), forward.stacked("h1"), forward.stacked("c1")
    h2, c2, sentinel = forward.stacked("h2"), forward.stacked("c2"), forward.stacked("sentinel")
    alpha, beta, context = forward.stacked("alpha"), forward.stacked("beta"), forward.stacked("context")
    regions = forward.initial_state["regions"]
    h1_prev, c1_prev, h2_prev, c2_prev = map(_previous, (h1, c1, h2, c2))
    steps, batch = x1.shape[:2]

    from_output_context, from_output_h2 = output_layer_relevance(model.output, context, h2, start, rules)
    carry_h1, carry_c1, carry_h2, carry_c2 = (torch.zeros(steps, batch, hidden, dtype=x1.dtype, device=x1.device)
                                              for _ in range(4))
    relevance_regions = torch.zeros(steps, *regions.shape, dtype=x1.dtype, device=x1.device)
    relevance_global = torch.zeros(steps, batch, hidden, dtype=x1.dtype, device=x1.device)
    relevance_words = torch.zeros(steps, batch, steps, dtype=x1.dtype, device=x1.device)
    for t in reversed(range(steps)):
        active = slice(t, steps)  # targets k >= t; index 0 of the slice is target t, which starts here
        relevance_h2 = carry_h2[active].clone()
        relevance_h2[0] += from_output_h2[t]
        relevance_x2, relevance_h2_prev, relevance_c2_prev = ops.lrp_lstm_cell(
            torch.cat([context[t], h1[t]], dim=-1), h2_prev[t], c2_prev[t], *_lstm_weights(model.lstm2),
            relevance_h2, carry_c2[active], rules.eps, rules.bias_factor)
        relevance_context = relevance_x2[..., :hidden].clone()
        relevance_context[0] += from_output_context[t]
        relevance_h1 = carry_h1[active] + relevance_x2[..., hidden:]
        # c_hat = beta s + (1 - beta) ctx, then ctx = sum_k alpha_k V_k (the paper's two stages)
        attended = torch.bmm(alpha[t].unsqueeze(1), regions).squeeze(1)
        relevance_sentinel, relevance_attended = ops.lrp_additive_attention(
            torch.stack([sentinel[t], attended], dim=1), torch.stack([beta[t], 1 - beta[t]], dim=1),
            relevance_context, rules.eps, rules.bias_factor).unbind(-2)
        relevance_regions[active] += ops.lrp_additive_attention(regions, alpha[t], relevance_attended, rules.eps,
                                                                rules.bias_factor)
        # the sentinel gate is a constant: all of the sentinel's relevance goes to the cell state c1
        relevance_x1, relevance_h1_prev, relevance_c1_prev = ops.lrp_lstm_cell(
            x1[t], h1_prev[t], c1_prev[t], *_lstm_weights(model.lstm1), relevance_h1,
            carry_c1[active] + relevance_sentinel, rules.eps, rules.bias_factor)
        # x1 = [h2_{t-1}; global feature; embedding]
        carry_h2[active] = relevance_x1[..., :hidden] + relevance_h2_prev
        carry_c2[active] = relevance_c2_prev
        carry_h1[active] = relevance_h1_prev
        carry_c1[active] = relevance_c1_prev
        relevance_global[active] += relevance_x1[..., hidden:2 * hidden]
        relevance_words[active, :, t] = relevance_x1[..., 2 * hidden:].sum(-1)
    relevance_features = _through_region_layer(features, model.region_proj, relevance_regions, rules)
    relevance_features = relevance_features + _through_mean(features, model.global_proj, relevance_global, rules)
    initial_state = sum(carry.sum(-1) for carry in (carry_h1, carry_c1, carry_h2, carry_c2))
    return DecoderRelevance(relevance_features, relevance_words, initial_state)


def multihead_relevance(model: MultiHeadCaptioner, features: torch.Tensor, forward: ForwardPass,
                        start: torch.Tensor, rules: Rules, mode: str = "constant",
                        head: Optional[int] = None) -> DecoderRelevance:
    """The multi-head decoder (docs/LRP_RULES.md: the output sum, the gate ``sigmoid(W h) * y`` as a constant, scaled
    dot-product attention in ``mode``, the LSTM, the mean feature). Nothing feeds back from attention into the
    LSTM, so every step's injected relevance is known up front: the output layer, the gate and the attention run
    for all steps at once and the LSTM is one ``lrp_lstm`` call for all targets. ``head``: explain through that
    head only (the other heads' relevance is set to zero at the attention output)."""
    hidden, heads = model.hidden, model.heads
    x, h, context, gated = (forward.stacked(name) for name in ("x", "h", "context", "gated"))
    steps, batch = x.shape[:2]
    state = forward.initial_state
    keys, values = state["keys"], state["values"]  # [B, heads, regions, d]

    relevance_gated, relevance_h_output = output_layer_relevance(model.output, gated, h, start, rules)
    # gated = gate * W_c ctx: the gate is a constant, all relevance goes to W_c ctx
    relevance_context = ops.lrp_linear(context.reshape(steps * batch, hidden), model.context_proj.weight,
                                       model.context_proj.bias, relevance_gated.reshape(steps * batch, hidden),
                                       rules.eps, rules.bias_factor).reshape(steps, batch, heads, hidden // heads)
    if head is not None:
        keep = torch.zeros(heads, 1, dtype=relevance_context.dtype, device=relevance_context.device)
        keep[head] = 1.0
        relevance_context = relevance_context * keep
    # the steps are the queries of one attention call; target k carries relevance at query k only
    queries = model.query(h.transpose(0, 1)).unflatten(-1, (heads, hidden // heads)).transpose(1, 2)
    relevance_output = torch.zeros(steps, batch, heads, steps, hidden // heads, dtype=x.dtype, device=x.device)
    diagonal = torch.arange(steps, device=x.device)
    relevance_output[diagonal, :, :, diagonal] = relevance_context
    attention = ops.lrp_sdpa(queries, keys, values, relevance_output, mode=mode, eps=rules.eps,
                             bias_factor=rules.bias_factor)
    relevance_h = torch.zeros(steps, steps, batch, hidden, dtype=x.dtype, device=x.device)  # [K, T, B, H]
    relevance_h[diagonal, diagonal] = relevance_h_output
    relevance_keys = None
    if mode == "attnlrp":
        relevance_queries, relevance_keys, relevance_values = attention
        relevance_queries = relevance_queries[diagonal, :, :, diagonal].flatten(-2)  # [T, B, H]
        relevance_h[diagonal, diagonal] += ops.lrp_linear(
            h.reshape(steps * batch, hidden), model.query.weight, model.query.bias,
            relevance_queries.reshape(steps * batch, hidden), rules.eps, rules.bias_factor).reshape(steps, batch, -1)
    else:
        relevance_values = attention
    zeros = x.new_zeros(batch, hidden)
    relevance_x, relevance_h0, relevance_c0 = ops.lrp_lstm(x, zeros, zeros, *_lstm_weights(model.lstm),
                                                           relevance_h, None, rules.eps, rules.bias_factor)

    def merge_heads(relevance):  # [K, B, heads, regions, d] -> [K, B, regions, H]
        return relevance.transpose(2, 3).flatten(-2)

    relevance_features = _through_region_layer(features, model.value, merge_heads(relevance_values), rules)
    if relevance_keys is not None:
        relevance_features = relevance_features + _through_region_layer(features, model.key,
                                                                        merge_heads(relevance_keys), rules)
    # x = [embedding; mean feature]
    relevance_features = relevance_features + _through_mean(features, model.mean_proj,
                                                            relevance_x[..., hidden:].sum(1), rules)
    relevance_words = relevance_x[..., :hidden].sum(-1).transpose(1, 2)  # [K, B, T]
    return DecoderRelevance(relevance_features, relevance_words, relevance_h0.sum(-1) + relevance_c0.sum(-1))
