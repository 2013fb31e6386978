"""capxai.nn: drop-in modules (same forward and parameters as their torch counterparts) whose backward, inside
``capxai.lrp()``, returns relevance computed by the fused capxai ops (Zennit's convention: the gradient slot carries
relevance), and :func:`relevance_rules`, the rules for the ordinary torch functions between them. Depends only on
capxai.ops."""
from capxai.nn.attention import AdditiveAttention, MultiheadAttention, scaled_dot_product_attention, weighted_sum
from capxai.nn.context import LRPSettings, active_settings, lrp
from capxai.nn.function_rules import NoRelevanceRule, RelevanceRules, relevance_rules
from capxai.nn.lstm import LSTM, LSTMCell

__all__ = ["LSTM", "LSTMCell", "AdditiveAttention", "MultiheadAttention", "weighted_sum",
           "scaled_dot_product_attention", "lrp", "LRPSettings", "active_settings", "relevance_rules",
           "RelevanceRules", "NoRelevanceRule"]
