"""Explanation-guided decoding: beam search that lowers the score of an object word whose relevance lies mostly on
the language side of the output layer (no training; docs/LRP_RULES.md, "Visual share of a word").

A captioner whose output layer reads two terms, ``logits = W_o (a + b) + b_o`` (``Captioner.output_terms``: the
visual term ``a`` -- ``c_hat`` of the adaptive captioner, the attended context of the multi-head one -- and the
language term ``b``, the LSTM's ``h``), explains each word ``w`` by the epsilon rule through ``W_o`` and then over
the two terms of the sum. Summed over the hidden units that gives, for every word of the vocabulary at once,

    R_a(w) = sum_i a_i f_i W_wi * g_w,   R_b(w) = sum_i b_i f_i W_wi * g_w,
    f_i = (a_i + b_i) / stab(a_i + b_i),  g_w = z_w / stab(z_w)

(``stab(x) = x + eps sign(x)``), two GEMMs ``(a * f) W_o^T`` and ``(b * f) W_o^T``; ``g_w`` cancels in the share
``s(w) = R_a(w) / (R_a(w) + R_b(w))``, clamped to [0, 1] (0 where the sum is not positive). The guided score of an
object word is ``log p(w) - penalty * max(0, threshold - s(w)) / threshold``; every other word keeps ``log p(w)``.
The decoded captions report the model's own log-probabilities.
"""
from typing import Callable, Mapping, Sequence

import torch

from capxai.models import Captioner
from capxai.models.contract import check_captioner
from capxai.ops.reference import stabilize

Guidance = Callable[[torch.Tensor, Mapping[str, torch.Tensor]], torch.Tensor]


def _terms_through_sum(visual: torch.Tensor, language: torch.Tensor, eps: float):
    """``(a * f, b * f)`` with ``f = (a + b) / stab(a + b)``: the two terms as the epsilon rule over their sum sees
    them (shapes kept)."""
    if visual.shape != language.shape or visual.dim() < 2:
        raise ValueError(f"visual_share: visual and language must be [..., H] of one shape, got "
                         f"{tuple(visual.shape)} and {tuple(language.shape)}")
    total = visual + language
    factor = total / stabilize(total, eps)
    return visual * factor, language * factor


def _share(relevance_visual: torch.Tensor, relevance_language: torch.Tensor) -> torch.Tensor:
    both = relevance_visual + relevance_language
    share = relevance_visual / torch.where(both > 0, both, torch.ones_like(both))
    return torch.where(both > 0, share.clamp(0.0, 1.0), torch.zeros_like(share))


def visual_share(output: torch.nn.Linear, visual: torch.Tensor, language: torch.Tensor,
                 eps: float = 0.01) -> torch.Tensor:
    """``[..., V]``: the share of each word's output-layer relevance on ``visual`` (``[..., H]``), against
    ``language`` (``[..., H]``), in [0, 1] (see the module's docstring)."""
    visual, language = _terms_through_sum(visual, language, eps)
    weight = output.weight.to(visual.dtype)
    return _share(visual @ weight.T, language @ weight.T)


def label_share(output: torch.nn.Linear, visual: torch.Tensor, language: torch.Tensor, labels: torch.Tensor,
                eps: float = 0.01) -> torch.Tensor:
    """``[...]``: the visual share of one word per row (``labels [...]``, e.g. the ground-truth words of a
    teacher-forced caption), equal to ``visual_share(...)`` at the label, in O(H) a row instead of O(V H)."""
    if labels.shape != visual.shape[:-1]:
        raise ValueError(f"label_share: labels must be {tuple(visual.shape[:-1])}, got {tuple(labels.shape)}")
    visual, language = _terms_through_sum(visual, language, eps)
    rows = output.weight.to(visual.dtype)[labels]  # [..., H]
    return _share((visual * rows).sum(-1), (language * rows).sum(-1))


def visual_and_language(captioner: Captioner, trace: Mapping[str, torch.Tensor]):
    """The visual and the language term of the output layer's input (``output_terms``, the visual first; their sum
    unchanged). With a visual sentinel in the trace (``beta``, ``sentinel``: adaptive attention's ``c_hat = beta s +
    (1 - beta) c``), ``beta s`` is language memory: it moves from the visual term to the language term."""
    visual, language = (trace[name] for name in captioner.output_terms)
    if "beta" in trace and "sentinel" in trace:
        memory = trace["beta"].unsqueeze(-1) * trace["sentinel"]
        visual, language = visual - memory, language + memory
    return visual, language


def object_word_mask(words: Sequence[str], object_words) -> torch.Tensor:
    """``[V]`` bool: the vocabulary's words that name an object by themselves (``ObjectWords.mentions``)."""
    return torch.tensor([bool(object_words.mentions(word)) for word in words], dtype=torch.bool)


class VisualShareGuidance:
    """The score adjustment of :func:`capxai.models.beam_search` (``guidance=``): object words (``objects [V]``
    bool) whose visual share is below ``threshold`` lose up to ``penalty`` nats (see the module's docstring).

    Args:
        captioner: a captioner with ``output_terms`` (visual first) and an ``output`` linear layer.
        objects: ``[V]`` bool mask of the object words (``object_word_mask``).
        threshold: the share in (0, 1] under which an object word is penalised.
        penalty: nats taken from an object word whose share is 0 (>= 0; 0 is plain beam search).
        eps: the epsilon rule's stabiliser.
    """

    def __init__(self, captioner: Captioner, objects: torch.Tensor, threshold: float = 0.5, penalty: float = 2.0,
                 eps: float = 0.01):
        check_captioner(captioner, "decoding")
        terms = getattr(captioner, "output_terms", None)
        if not (isinstance(terms, tuple) and len(terms) == 2) or not isinstance(
                getattr(captioner, "output", None), torch.nn.Linear):
            raise TypeError(f"guided decoding: {type(captioner).__name__} has no output_terms (the visual and the "
                            "language term its output layer sums), so no word has a visual share")
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"guided decoding: threshold must be in (0, 1], got {threshold}")
        if penalty < 0:
            raise ValueError(f"guided decoding: penalty must be >= 0, got {penalty}")
        if objects.dtype != torch.bool or objects.shape != (captioner.vocab_size,):
            raise ValueError(f"guided decoding: objects must be a [{captioner.vocab_size}] bool mask, got "
                             f"{objects.dtype} {tuple(objects.shape)}")
        self.captioner, self.threshold, self.penalty, self.eps = captioner, threshold, penalty, eps
        self.objects = objects

    def __call__(self, log_probs: torch.Tensor, trace: Mapping[str, torch.Tensor]) -> torch.Tensor:
        visual, language = visual_and_language(self.captioner, trace)
        share = visual_share(self.captioner.output, visual.float(), language.float(), self.eps)
        shortfall = (self.threshold - share).clamp_min(0.0) / self.threshold
        objects = self.objects.to(log_probs.device)
        return log_probs - self.penalty * shortfall * objects
