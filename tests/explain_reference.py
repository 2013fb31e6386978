"""A slow, obviously-correct LRP of the two captioners' decoders: one word at a time, one step at a time, written
from the ops' pure-PyTorch references only (docs/LRP_RULES.md). The explainers' fused, all-words-at-once sweep is tested
against it, and the benchmarks use it as the per-word loop the paper's code runs."""
import numpy as np
import torch

from capxai.ops.reference import (lrp_additive_attention_reference, lrp_linear_reference,
                                  lrp_lstm_cell_reference, lrp_sdpa_reference, stabilize)


def _run(model, features, captions, last_step):
    state = model.init_state(features)
    steps = []
    for t in range(last_step + 1):
        logits, new_state, trace = model.step(state, captions[:, t])
        steps.append((state, logits, trace))
        state = new_state
    return steps


def _start(logits, word, keep):
    """onehot(word) * logit, zero for captions that have no word at this position."""
    picked = logits.gather(1, word[:, None]) * keep[:, None].to(logits.dtype)
    return torch.zeros_like(logits).scatter(1, word[:, None], picked)


def _sum_rule(first, second, relevance, eps, bias_factor):
    """Epsilon rule over the two terms of ``first + second``."""
    values = torch.stack([first, second], dim=1)
    shares = lrp_additive_attention_reference(values, torch.ones_like(values[:, :, 0]), relevance, eps, bias_factor)
    return shares[:, 0], shares[:, 1]


def _mean_rule(features, layer, relevance, eps, bias_factor):
    relevance_mean = lrp_linear_reference(features.mean(1), layer.weight, layer.bias, relevance, eps, bias_factor)
    uniform = torch.full_like(features[:, :, 0], 1.0 / features.shape[1])
    return lrp_additive_attention_reference(features, uniform, relevance_mean, eps, bias_factor)


def _region_rule(features, layer, relevance, eps, bias_factor):
    batch, regions, _ = features.shape
    flat = lrp_linear_reference(features.reshape(batch * regions, -1), layer.weight, layer.bias,
                                relevance.reshape(batch * regions, -1), eps, bias_factor)
    return flat.reshape(batch, regions, -1)


def _cell(cell):
    return cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh


def adaptive_word(model, features, captions, k, keep, eps=0.01, bias_factor=0.0):
    """Relevance of word k+1 (predicted at step k) of every caption: (features [B, regions, C], fed words [B, k+1],
    initial states [B])."""
    steps = _run(model, features, captions, k)
    hidden = model.hidden
    regions = steps[0][0]["regions"]
    _, logits, trace = steps[k]
    relevance_sum = lrp_linear_reference(trace["context"] + trace["h2"], model.output.weight, model.output.bias,
                                         _start(logits, captions[:, k + 1], keep), eps, bias_factor)
    from_output_context, relevance_h2 = _sum_rule(trace["context"], trace["h2"], relevance_sum, eps, bias_factor)
    relevance_c2 = relevance_h1 = relevance_c1 = torch.zeros_like(relevance_h2)
    relevance_regions = torch.zeros_like(regions)
    relevance_global = torch.zeros_like(relevance_h2)
    words = []
    for t in reversed(range(k + 1)):
        state, _, trace = steps[t]
        x2 = torch.cat([trace["context"], trace["h1"]], dim=-1)
        relevance_x2, relevance_h2, relevance_c2 = lrp_lstm_cell_reference(
            x2, state["h2"], state["c2"], *_cell(model.lstm2), relevance_h2, relevance_c2, eps, bias_factor)
        relevance_context = relevance_x2[:, :hidden] + (from_output_context if t == k else 0.0)
        relevance_h1 = relevance_h1 + relevance_x2[:, hidden:]
        attended = torch.einsum("bn,bnd->bd", trace["alpha"], regions)
        mixed = lrp_additive_attention_reference(torch.stack([trace["sentinel"], attended], dim=1),
                                                 torch.stack([trace["beta"], 1 - trace["beta"]], dim=1),
                                                 relevance_context, eps, bias_factor)
        relevance_regions = relevance_regions + lrp_additive_attention_reference(
            regions, trace["alpha"], mixed[:, 1], eps, bias_factor)
        relevance_x1, relevance_h1, relevance_c1 = lrp_lstm_cell_reference(
            trace["x1"], state["h1"], state["c1"], *_cell(model.lstm1), relevance_h1, relevance_c1 + mixed[:, 0],
            eps, bias_factor)
        relevance_h2 = relevance_h2 + relevance_x1[:, :hidden]
        relevance_global = relevance_global + relevance_x1[:, hidden:2 * hidden]
        words.append(relevance_x1[:, 2 * hidden:].sum(-1))
    relevance_features = (_region_rule(features, model.region_proj, relevance_regions, eps, bias_factor)
                          + _mean_rule(features, model.global_proj, relevance_global, eps, bias_factor))
    initial = sum(r.sum(-1) for r in (relevance_h1, relevance_c1, relevance_h2, relevance_c2))
    return relevance_features, torch.stack(words[::-1], dim=1), initial


def multihead_word(model, features, captions, k, keep, eps=0.01, bias_factor=0.0, mode="constant", head=None):
    """As :func:`adaptive_word` for the multi-head captioner (one query per step, one LSTM cell per step)."""
    steps = _run(model, features, captions, k)
    hidden, heads = model.hidden, model.heads
    keys, values = steps[0][0]["keys"], steps[0][0]["values"]
    _, logits, trace = steps[k]
    relevance_sum = lrp_linear_reference(trace["gated"] + trace["h"], model.output.weight, model.output.bias,
                                         _start(logits, captions[:, k + 1], keep), eps, bias_factor)
    relevance_gated, relevance_h = _sum_rule(trace["gated"], trace["h"], relevance_sum, eps, bias_factor)
    relevance_context = lrp_linear_reference(trace["context"], model.context_proj.weight, model.context_proj.bias,
                                             relevance_gated, eps, bias_factor)
    relevance_context = relevance_context.reshape(-1, heads, 1, hidden // heads)
    if head is not None:
        others = [h for h in range(heads) if h != head]
        relevance_context[:, others] = 0.0
    query = model.query(trace["h"]).reshape(-1, heads, 1, hidden // heads)
    attention = lrp_sdpa_reference(query, keys, values, relevance_context, mode=mode, eps=eps,
                                   bias_factor=bias_factor)
    relevance_keys = torch.zeros_like(keys)
    if mode == "attnlrp":
        relevance_query, relevance_keys, relevance_values = attention
        relevance_h = relevance_h + lrp_linear_reference(trace["h"], model.query.weight, model.query.bias,
                                                         relevance_query.reshape(-1, hidden), eps, bias_factor)
    else:
        relevance_values = attention
    relevance_c = torch.zeros_like(relevance_h)
    relevance_mean = torch.zeros_like(relevance_h)
    words = []
    for t in reversed(range(k + 1)):
        state, _, trace = steps[t]
        relevance_x, relevance_h, relevance_c = lrp_lstm_cell_reference(
            trace["x"], state["h"], state["c"], *_cell(model.lstm), relevance_h, relevance_c, eps, bias_factor)
        words.append(relevance_x[:, :hidden].sum(-1))
        relevance_mean = relevance_mean + relevance_x[:, hidden:]

    def merged(relevance):  # [B, heads, regions, d] -> [B, regions, H]
        return relevance.transpose(1, 2).reshape(relevance.shape[0], relevance.shape[2], hidden)

    relevance_features = (_region_rule(features, model.value, merged(relevance_values), eps, bias_factor)
                          + _region_rule(features, model.key, merged(relevance_keys), eps, bias_factor)
                          + _mean_rule(features, model.mean_proj, relevance_mean, eps, bias_factor))
    return relevance_features, torch.stack(words[::-1], dim=1), relevance_h.sum(-1) + relevance_c.sum(-1)


@torch.no_grad()
def reference_feature_weights(output, first, second, logits, skipped, eps, labels=None, common=False,
                              visual_only=False):
    """LRP-inference fine-tuning's feature weights, row by row from the op references: the epsilon rule through W_o
    for one word (the top word, or the label), the two-term sum rule, then R / max + 1 with each vector's own maximum
    or one common maximum; the second (language) vector keeps 1 when ``visual_only``."""
    weights_first, weights_second = torch.ones_like(first), torch.ones_like(second)
    for index in np.ndindex(*first.shape[:-1]):
        word = int(labels[index]) if labels is not None else int(logits[index].argmax())
        if skipped[word]:
            continue
        start = torch.zeros_like(logits[index])
        start[word] = logits[index][word]
        total = first[index] + second[index]
        relevance_total = lrp_linear_reference(total[None], output.weight, output.bias, start[None], eps)[0]
        relevance_first = first[index] / stabilize(total, eps) * relevance_total
        relevance_second = second[index] / stabilize(total, eps) * relevance_total
        largest_first, largest_second = relevance_first.abs().max(), relevance_second.abs().max()
        if common:
            largest_first = largest_second = max(largest_first, largest_second)
        weights_first[index] = relevance_first / largest_first + 1
        if not visual_only:
            weights_second[index] = relevance_second / largest_second + 1
    return weights_first, weights_second
