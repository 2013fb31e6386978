"""The captioner contract: what a ``Captioner`` must offer for each use, checked in one place with errors that name
the missing piece.

=================  ===========================================================================================
use                what the captioner offers
=================  ===========================================================================================
decoding           ``vocab_size`` (int), ``init_state(features [B, regions, C]) -> state`` (a dict of batch-first
                   tensors), ``step(state, words [B]) -> (logits [B, V], state, activations)``
every explainer    the above, and ``embedding``: the ``nn.Embedding`` that ``step`` calls once per step on the word
                   it is fed (word relevance is read at its output); ``feature_dim`` (C), when present, is checked
                   against the features
LRP                built from ``capxai.nn`` modules and the functions of docs/LRP_RULES.md "The generic path"
                   (any other function on the relevance path is refused by name at explain time); a fused fast
                   path is used where one is registered for the class
Grad-CAM family    an encoder with a ``Conv2d`` (or ``layer=``)
attention          ``step``'s activations hold ``alpha [B, regions]`` (one distribution; with ``beta [B]`` the
                   sentinel share) or ``attention [B, heads, regions]``
fine-tuning        ``output_terms``: the names of the two activations whose sum ``output`` (an ``nn.Linear``)
                   reads after ``dropout``
=================  ===========================================================================================
"""
from typing import Optional

from torch import nn

from capxai.models.captioner import Captioner
from capxai.models.decoding import ATTENTION_KEYS

USES = ("decoding", "explain", "finetune")
ATTENTION_ACTIVATIONS = ATTENTION_KEYS  # what the decoding and the attention baseline read


def check_captioner(captioner, use: str = "explain") -> Captioner:
    """``captioner`` when it offers what ``use`` ("decoding", "explain", "finetune") needs, else a TypeError naming
    the missing piece."""
    if use not in USES:
        raise ValueError(f"check_captioner: use must be one of {USES}, got {use!r}")
    name = type(captioner).__name__
    if not isinstance(captioner, Captioner):
        raise TypeError(f"capxai: expected a capxai.models.Captioner subclass, got {name}")
    vocab_size = getattr(captioner, "vocab_size", None)
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1:
        raise TypeError(f"capxai: {name} must set vocab_size (a positive int), got {vocab_size!r}")
    if use in ("explain", "finetune") and not isinstance(getattr(captioner, "embedding", None), nn.Embedding):
        raise TypeError(f"capxai: {name} has no .embedding (an nn.Embedding that step() calls on the word it is "
                        "fed): the explainers read each word's relevance at its output")
    width = feature_width(captioner)
    if width is not None and (isinstance(width, bool) or not isinstance(width, int) or width < 1):
        raise TypeError(f"capxai: {name}.feature_dim must be a positive int (the width C of the feature grid), got "
                        f"{width!r}")
    if use == "finetune":
        terms = getattr(captioner, "output_terms", None)
        if not (isinstance(terms, tuple) and len(terms) == 2 and all(isinstance(t, str) for t in terms)):
            raise TypeError(f"capxai: {name} has no output_terms (the two activations whose sum the output layer "
                            "reads), which LRP-inference fine-tuning weights; it cannot be fine-tuned that way")
        if not isinstance(getattr(captioner, "output", None), nn.Linear) or not isinstance(
                getattr(captioner, "dropout", None), nn.Dropout):
            raise TypeError(f"capxai: {name} needs .output (nn.Linear) and .dropout (nn.Dropout) for fine-tuning")
    return captioner


def feature_width(captioner) -> Optional[int]:
    """C, the width of the feature grid the captioner reads, when it says (``feature_dim``)."""
    return getattr(captioner, "feature_dim", None)


def attention_of(activations: dict, name: str) -> str:
    """Which attention activation a step traced (``ATTENTION_ACTIVATIONS``), else a ValueError naming them."""
    for key in ATTENTION_ACTIVATIONS:
        if key in activations:
            return key
    raise ValueError(f"capxai.explain.Attention: {name}.step traces neither 'alpha' [B, regions] nor 'attention' "
                     f"[B, heads, regions] among its activations {sorted(activations)}")
