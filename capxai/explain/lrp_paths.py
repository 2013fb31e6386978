"""Which LRP path explains a captioner's decoder: a registered fused fast path for a captioner class capxai knows
(the paper's two: one reverse sweep of the fused ops, targets skipped where they carry nothing), else the generic
path (one vmapped autograd backward through any captioner built from capxai.nn modules and ordinary layers). Both
give the same relevance (tested in float64 on the built-ins)."""
from typing import Callable, Dict, Optional

import torch

from capxai.explain.decoder_lrp import DecoderRelevance, Rules, adaptive_relevance, multihead_relevance, start_relevance
from capxai.explain.forward import ForwardPass
from capxai.explain.generic_lrp import generic_relevance
from capxai.models import AdaptiveAttentionCaptioner, MultiHeadCaptioner
from capxai.nn.context import LRPSettings

PATHS = ("auto", "fused", "generic")
# captioner class -> fast path (model, features, forward, start, rules, mode, head) -> DecoderRelevance
FAST_PATHS: Dict[type, Callable[..., DecoderRelevance]] = {}


def register_fast_path(captioner_class: type, function: Callable[..., DecoderRelevance]) -> None:
    """Registers a fused fast path for exactly ``captioner_class`` (not its subclasses, which may change ``step``)."""
    FAST_PATHS[captioner_class] = function


register_fast_path(AdaptiveAttentionCaptioner,
                   lambda model, features, forward, start, rules, mode, head:
                   adaptive_relevance(model, features, forward, start, rules))
register_fast_path(MultiHeadCaptioner, multihead_relevance)


def has_fast_path(captioner) -> bool:
    return type(captioner) in FAST_PATHS


def decoder_relevance(model, features: torch.Tensor, forward: ForwardPass, captions: torch.Tensor,
                      mask: torch.Tensor, rules: Rules, mode: str = "constant", head: Optional[int] = None,
                      path: str = "auto", targets: Optional[torch.Tensor] = None,
                      contrast: Optional[torch.Tensor] = None) -> DecoderRelevance:
    """LRP of every explained word (``captions [B, L]``, ``<start>`` first; ``mask [B, L-1]``) through the
    decoder onto the feature grid, the fed words and the initial states. ``path``: "auto" (the fast path when one
    is registered), "fused" or "generic". ``forward``: :func:`capxai.explain.forward.teacher_force`'s result.
    ``targets`` / ``contrast`` ``[B, L-1]``: explain these words' logits (default: the caption's), against those."""
    if path not in PATHS:
        raise ValueError(f"capxai.explain.LRP: path must be one of {PATHS}, got {path!r}")
    fused = FAST_PATHS.get(type(model))
    if path == "fused" and fused is None:
        raise ValueError(f"capxai.explain.LRP: no fused path is registered for {type(model).__name__} (registered: "
                         f"{sorted(c.__name__ for c in FAST_PATHS)}); use path='generic' or 'auto'")
    if path == "generic" or fused is None:
        if head is not None:
            raise ValueError("capxai.explain.LRP: head= needs the multi-head captioner's fused path")
        return generic_relevance(model, features, captions, mask, LRPSettings(rules.eps, rules.bias_factor, mode),
                                 targets, contrast)
    start = start_relevance(forward, captions[:, 1:] if targets is None else targets, mask, contrast)
    return fused(model, features, forward, start, rules, mode, head)
