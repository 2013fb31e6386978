"""Drop-in attention modules whose backward, inside ``capxai.lrp()``, is the attention rule of docs/LRP_RULES.md
computed by the fused ops: ``AdditiveAttention`` (Bahdanau-style, with Lu et al.'s optional visual sentinel) and
``MultiheadAttention`` (``torch.nn.MultiheadAttention``'s parameters and forward, attention by SDPA)."""
import torch
from torch import nn

from capxai.nn.context import active_settings
from capxai.nn.functions import LinearRelevance, SDPARelevance, WeightedSumRelevance


def weighted_sum(values, weights):
    """``sum_n weights[b, n] * values[b, n]`` (``[B, N, D]``, ``[B, N]`` -> ``[B, D]``); inside ``capxai.lrp()``
    its backward is ``lrp_additive_attention`` (the weights are constants and receive no relevance)."""
    settings = active_settings()
    if settings is None:
        return torch.bmm(weights.unsqueeze(1), values).squeeze(1)
    return WeightedSumRelevance.apply(values, weights, settings)


class AdditiveAttention(nn.Module):
    """Additive attention ``alpha = softmax(w_h tanh(W_v V + W_g h))``, ``ctx = sum_n alpha_n V_n``, with an optional
    visual sentinel (Lu et al. 2017, "Knowing when to look"): ``beta`` from the same scores over the sentinel,
    ``c_hat = beta s + (1 - beta) ctx``.

    Inside ``capxai.lrp()`` relevance follows the paper's two stages (docs/LRP_RULES.md, "Additive (adaptive)
    attention"): the epsilon rule over the two terms of ``c_hat``, then over the N values of ``ctx``; the attention
    weights, the query and the projections get none.

    Args:
        value_dim: D, size of each value (region feature) and of the sentinel.
        query_dim: H, size of the query (decoder hidden state).
        attention_dim: size of the score space.
        sentinel: whether forward takes a visual sentinel.

    Forward: ``values [B, N, D]``, ``query [B, H]``, ``sentinel [B, D]`` (only with ``sentinel=True``),
    optionally ``projected_values = module.value_proj(values)`` computed once when the same values are attended at
    many steps -> ``(context [B, D], alpha [B, N], beta [B] or None)``.
    """

    def __init__(self, value_dim: int, query_dim: int, attention_dim: int, sentinel: bool = False):
        super().__init__()
        self.value_proj = nn.Linear(value_dim, attention_dim)
        self.query_proj = nn.Linear(query_dim, attention_dim)
        self.score = nn.Linear(attention_dim, 1)
        self.sentinel_proj = nn.Linear(value_dim, attention_dim) if sentinel else None

    def forward(self, values, query, sentinel=None, projected_values=None):
        if values.dim() != 3 or query.dim() != 2 or values.shape[0] != query.shape[0]:
            raise ValueError(f"AdditiveAttention: values must be [B, N, D] and query [B, H], got "
                             f"{list(values.shape)} and {list(query.shape)}")
        if (sentinel is None) != (self.sentinel_proj is None):
            raise ValueError("AdditiveAttention: pass a sentinel exactly when the module was built with "
                             "sentinel=True")
        query_scores = self.query_proj(query).unsqueeze(1)
        if projected_values is None:
            projected_values = self.value_proj(values)
        scores = self.score(torch.tanh(projected_values + query_scores)).squeeze(-1)  # [B, N]
        alpha = torch.softmax(scores, dim=-1)
        context = weighted_sum(values, alpha)
        if sentinel is None:
            return context, alpha, None
        sentinel_score = self.score(torch.tanh(self.sentinel_proj(sentinel).unsqueeze(1) + query_scores))
        beta = torch.softmax(torch.cat([scores, sentinel_score.squeeze(-1)], dim=-1), dim=-1)[:, -1]
        mixed = weighted_sum(torch.stack([sentinel, context], dim=1), torch.stack([beta, 1 - beta], dim=1))
        return mixed, alpha, beta


class MultiheadAttention(nn.MultiheadAttention):
    """``torch.nn.MultiheadAttention`` (same parameters, state_dict keys and forward) whose backward, inside
    ``capxai.lrp()``, carries relevance: the epsilon rule through the input and output projections
    (``lrp_linear``) and ``lrp_sdpa`` in the settings' mode through the attention, for all heads.

    Inside ``capxai.lrp()``: query, key and value must share ``embed_dim`` (no kdim/vdim), no ``add_bias_kv`` or
    ``add_zero_attn``, and attention dropout is not applied.
    """

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        settings = active_settings()
        if settings is None:
            return super().forward(query, key, value, key_padding_mask=key_padding_mask, need_weights=need_weights,
                                   attn_mask=attn_mask, average_attn_weights=average_attn_weights,
                                   is_causal=is_causal)
        if not self._qkv_same_embed_dim or self.bias_k is not None or self.add_zero_attn:
            raise ValueError("capxai.nn.MultiheadAttention: kdim/vdim, add_bias_kv and add_zero_attn are not "
                             "supported inside capxai.lrp()")
        batched = query.dim() == 3
        if not batched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
        elif self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        target_len, batch, embed = query.shape
        source_len = key.shape[0]
        heads, head_dim = self.num_heads, self.head_dim
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None, None, None)

        def split_heads(t, length):
            return t.reshape(length, batch, heads, head_dim).permute(1, 2, 0, 3)  # [B, h, L, d]

        q = split_heads(LinearRelevance.apply(query, w_q, b_q, settings), target_len)
        k = split_heads(LinearRelevance.apply(key, w_k, b_k, settings), source_len)
        v = split_heads(LinearRelevance.apply(value, w_v, b_v, settings), source_len)
        mask = self._merged_mask(attn_mask, key_padding_mask, is_causal, batch, target_len, source_len, q.dtype,
                                 q.device)
        attended = SDPARelevance.apply(q, k, v, mask, settings)  # [B, h, Lq, d]
        attended = attended.permute(2, 0, 1, 3).reshape(target_len, batch, embed)
        output = LinearRelevance.apply(attended, self.out_proj.weight, self.out_proj.bias, settings)
        weights = None
        if need_weights:
            with torch.no_grad():
                scores = q @ k.transpose(-2, -1) / head_dim**0.5
                weights = torch.softmax(scores if mask is None else scores + mask, dim=-1)
                weights = weights.mean(1) if average_attn_weights else weights
                weights = weights if batched else weights.squeeze(0)
        if not batched:
            return output.squeeze(1), weights
        return (output.transpose(0, 1) if self.batch_first else output), weights

    def _merged_mask(self, attn_mask, key_padding_mask, is_causal, batch, target_len, source_len, dtype, device):
        """torch's MHA masks (bool True = do NOT attend, or additive float) as one additive float mask
        ``[B, h, Lq, Lk]`` for SDPA, or None."""
        if attn_mask is None and is_causal:
            attn_mask = torch.ones(target_len, source_len, dtype=torch.bool, device=device).triu(1)
        if attn_mask is None and key_padding_mask is None:
            return None
        merged = torch.zeros(batch, self.num_heads, target_len, source_len, dtype=dtype, device=device)
        for mask, shape in ((attn_mask, None), (key_padding_mask, (batch, 1, 1, source_len))):
            if mask is None:
                continue
            if mask.dim() == 3:  # [B * h, Lq, Lk]
                mask = mask.reshape(batch, self.num_heads, target_len, source_len)
            elif shape is not None:
                mask = mask.reshape(shape)
            merged = merged.masked_fill(mask, float("-inf")) if mask.dtype == torch.bool else merged + mask
        return merged


def scaled_dot_product_attention(q, k, v, attn_mask=None):
    """``torch.nn.functional.scaled_dot_product_attention``; inside ``capxai.lrp()`` its backward is ``lrp_sdpa`` in
    the settings' mode."""
    settings = active_settings()
    if settings is None:
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    return SDPARelevance.apply(q, k, v, attn_mask, settings)
