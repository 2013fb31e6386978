"""LRP-inference fine-tuning's feature weights and training logits (docs/LRP_RULES.md, "LRP-inference fine-tuning
weights"; Sun et al. 2022, section 4).

At every step, under teacher forcing, the model's own top word ``w = argmax logits[t]`` is explained on the output
layer's two inputs (``c_hat`` and ``h2`` for the adaptive model, the gated context and ``h`` for the multi-head one:
``Captioner.output_terms``) by the epsilon rule with the fused ops; each input vector gets ``R / max_d |R_d| + 1``
(``1`` for stop words, special tokens, padding and an all-zero relevance). The training logits are then
``W_o dropout(w_a * a + w_b * b) + b_o`` beside the plain ``W_o dropout(a + b) + b_o``, both with one dropout mask.
Everything is batched over captions and steps.
"""
import contextlib
import dataclasses
from importlib import resources
from pathlib import Path
from typing import FrozenSet, Optional, Sequence, Tuple

import torch
from torch import nn

from capxai.data.vocabulary import SPECIALS, Vocabulary
from capxai.explain.decoder_lrp import Rules, two_term_relevance
from capxai.explain.guided_decoding import label_share, visual_and_language
from capxai.models.captioner import Captioner, DecoderTrace
from capxai.ops.reference import stabilize
from capxai.train.label_gates import gate_below_threshold, share_shortfall



@dataclasses.dataclass(frozen=True)
class Weighting:
    """The choices of LRP-inference fine-tuning's weights; the defaults are the paper's. ``word``: the explained
    word, "top" (the model's own) or "label" (the ground truth); ``normalisation``: "each" (``R / max|R| + 1`` per
    vector) or "common" (one maximum over both vectors); ``terms``: "both" or "visual" (the second, language term
    keeps weight 1); ``objects_only``: only steps whose explained word names an object (the caller's ``skipped``
    mask then holds every other word)."""

    word: str = "top"
    normalisation: str = "each"
    terms: str = "both"
    objects_only: bool = False

    def __post_init__(self):
        for name, allowed in (("word", ("top", "label")), ("normalisation", ("each", "common")),
                              ("terms", ("both", "visual"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"Weighting: {name} must be one of {allowed}, got {getattr(self, name)!r}")


PAPER = Weighting()


def load_stop_words(path=None) -> FrozenSet[str]:
    """Stop words, one per line (``#`` starts a comment); without ``path`` the list shipped with capxai (NLTK's
    English list). An empty or unreadable file is an error: fine-tuning without stop words is not what was asked."""
    if path is None:
        text = resources.files("capxai.train").joinpath("resources/stop_words.txt").read_text(encoding="utf-8")
        source = "capxai's stop-word list"
    else:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"stop-word file {path} does not exist")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as error:
            raise ValueError(f"stop-word file {path} is not UTF-8 text ({error.reason})") from None
        source = f"stop-word file {path}"
    words = frozenset(line.split("#", 1)[0].strip().lower() for line in text.splitlines()) - {""}
    if not words:
        raise ValueError(f"{source} holds no words (one word per line, '#' comments); give a list with words, or "
                         "leave --stop-words out to use capxai's")
    return words


def stop_word_mask(vocabulary: Vocabulary, stop_words: Sequence[str]) -> torch.Tensor:
    """``[V]`` bool: True for the words that get weight 1 (stop words and the special tokens)."""
    skipped = set(stop_words) | set(SPECIALS)
    return torch.tensor([word in skipped for word in vocabulary.words], dtype=torch.bool)


@contextlib.contextmanager
def dropout_off(module: nn.Module):
    """``module`` in eval mode inside the block (its train/eval mode restored after)."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def _normalised(relevance: torch.Tensor, largest: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``R / max_d |R_d| + 1`` per row (or ``R / largest + 1``); a row of zeros gives 1."""
    if largest is None:
        largest = relevance.abs().amax(-1, keepdim=True)
    return torch.where(largest > 0, relevance / largest.clamp_min(torch.finfo(relevance.dtype).tiny), 0.0) + 1.0


def _explained_output_relevance(output: nn.Linear, total: torch.Tensor, logits: torch.Tensor, words: torch.Tensor,
                                eps: float) -> torch.Tensor:
    """The epsilon rule through ``W_o`` for a start relevance ``onehot(w) * logit_w`` (docs/LRP_RULES.md, linear): only
    output ``w`` carries relevance, so ``R_i = x_i W_wi / stab(z_w) * z_w`` with ``z_w`` the logit (bias included) --
    what ``ops.lrp_linear`` gives for that start (tested), in O(H) per row instead of O(V H)."""
    picked = logits.gather(-1, words.unsqueeze(-1))  # [N, 1]
    return total * output.weight[words] * (picked / stabilize(picked, eps))


@torch.no_grad()
def feature_weights(output: nn.Linear, first: torch.Tensor, second: torch.Tensor, logits: torch.Tensor,
                    skipped: torch.Tensor, valid: Optional[torch.Tensor] = None, eps: float = 0.01,
                    weighting: Weighting = PAPER, labels: Optional[torch.Tensor] = None
                    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The weights of the output layer's two inputs for the model's own top word at every step (or as
    ``weighting`` says: the label, one normalisation, the visual term only).

    Args:
        output: the output layer ``W_o, b_o``.
        first, second: its two inputs ``[..., H]`` (before dropout).
        logits: ``W_o (first + second) + b_o`` without dropout, ``[..., V]``.
        skipped: ``[V]`` bool, words that get weight 1 (``stop_word_mask``).
        valid: ``[...]`` bool, steps to weigh (None: all); the others get 1.
        eps: the epsilon rule's stabiliser.
        weighting: the method's choices (default: the paper's).
        labels: ``[...]`` the ground-truth words (needed when ``weighting.word == "label"``).

    Returns:
        ``(weights_first, weights_second, explained)``: ``[..., H]`` each, in ``[0, 2]``, no gradient; ``explained
        [...]`` marks the steps whose top word was explained.
    """
    # in the output layer's precision (float32) under autocast too: the epsilon rule divides by the logit
    dtype = output.weight.dtype
    first, second, logits = first.to(dtype), second.to(dtype), logits.to(dtype)
    if weighting.word == "label":
        if labels is None or labels.shape != logits.shape[:-1]:
            raise ValueError(f"feature_weights: explaining the label needs labels of shape {tuple(logits.shape[:-1])}")
        word = labels
    else:
        word = logits.argmax(-1)
    explained = ~skipped.to(word.device)[word]
    if valid is not None:
        explained &= valid
    weights_first, weights_second = torch.ones_like(first), torch.ones_like(second)
    rows = explained.nonzero(as_tuple=True)
    if rows[0].numel():
        first_rows, second_rows = first[rows], second[rows]
        relevance_total = _explained_output_relevance(output, first_rows + second_rows, logits[rows], word[rows], eps)
        relevance_first, relevance_second = two_term_relevance(first_rows, second_rows, relevance_total, Rules(eps))
        largest = None
        if weighting.normalisation == "common":
            largest = torch.maximum(relevance_first.abs().amax(-1, keepdim=True),
                                    relevance_second.abs().amax(-1, keepdim=True))
        weights_first[rows] = _normalised(relevance_first, largest)
        if weighting.terms == "both":
            weights_second[rows] = _normalised(relevance_second, largest)
    return weights_first, weights_second, explained


def training_logits(captioner: Captioner, trace: DecoderTrace, skipped: Optional[torch.Tensor],
                    valid: Optional[torch.Tensor] = None, eps: float = 0.01, weighting: Weighting = PAPER,
                    labels: Optional[torch.Tensor] = None):
    """``(weighted_logits, plain_logits, explained)`` of a teacher-forced ``trace`` computed with dropout off (so
    ``trace.logits`` are the inference logits whose top word is explained); both training logits share one dropout
    mask. ``skipped = None`` (baseline fine-tuning) gives no weights: ``weighted_logits`` is ``plain_logits``.
    ``weighting``, ``labels``: as for :func:`feature_weights`."""
    first, second = (trace.activations[name] for name in captioner.output_terms)
    mask = captioner.dropout(torch.ones_like(first))
    plain = captioner.output(mask * (first + second))
    if skipped is None:
        return plain, plain, torch.zeros(first.shape[:-1], dtype=torch.bool, device=first.device)
    weights_first, weights_second, explained = feature_weights(captioner.output, first, second, trace.logits,
                                                               skipped, valid, eps, weighting, labels)
    weighted = captioner.output(mask * (weights_first * first + weights_second * second))
    return weighted, plain, explained


class FinetuneObjective(nn.Module):
    """The cross-entropy fine-tuning loss as a module (so DistributedDataParallel can wrap it): ``forward(images,
    captions [N, L], image_index [N], phrases)`` -> the loss of the method (``capxai.train.methods``):
    ``CE(weighted logits) + CE(plain logits)`` for the LRP methods, ``2 CE`` for baseline fine-tuning (so the methods
    differ in the weights alone: same gradient scale, same clipping), ``2 CE`` over the unmasked words for the label
    gates, ``2 CE + penalty * mean(1 - share)`` for the share penalty; each CE a mean over real (unmasked) words.

    Args:
        model: encoder + captioner (``CaptionModel``).
        skipped: ``[V]`` bool, words the LRP weights leave at 1 (None: no weights).
        eps: the epsilon rule's stabiliser.
        pad: the padding id.
        weighting: the LRP weights' choices (:class:`Weighting`).
        gate: None, "explanation" (mask object phrases whose head noun's visual share is below ``threshold``) or
            "annotation" (mask the phrases ``phrases.hidden`` marks).
        threshold: the visual share below which the "explanation" gate masks a phrase.
        penalty: weight of the share penalty (0: none).

    ``phrases`` (:class:`capxai.train.label_gates.ObjectPhrases`) is needed by the gates and the penalty.
    """

    def __init__(self, model: nn.Module, skipped: Optional[torch.Tensor], eps: float = 0.01, pad: int = 0,
                 weighting: Weighting = PAPER, gate: Optional[str] = None, threshold: float = 0.5,
                 penalty: float = 0.0):
        super().__init__()
        if gate not in (None, "explanation", "annotation"):
            raise ValueError(f"FinetuneObjective: gate must be None, 'explanation' or 'annotation', got {gate!r}")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"FinetuneObjective: threshold must be in [0, 1], got {threshold}")
        if penalty < 0:
            raise ValueError(f"FinetuneObjective: penalty must be >= 0, got {penalty}")
        self.model, self.eps, self.pad, self.weighting = model, eps, pad, weighting
        self.gate, self.threshold, self.penalty = gate, threshold, penalty
        self.register_buffer("skipped", skipped, persistent=False)
        self._counts = {}  # tensors summed since the last ``take_statistics`` (reading them would stall a GPU)

    def _count(self, **values) -> None:
        for name, value in values.items():
            self._counts[name] = self._counts.get(name, 0) + value

    def take_statistics(self) -> dict:
        """Since the last call (then reset): the share of real words whose explained word was weighted, of object
        words whose cross-entropy was masked, and the mean share penalty, as the method has them."""
        counts, self._counts = self._counts, {}
        statistics = {}
        if "explained" in counts:
            statistics["explained_share"] = float(counts["explained"]) / max(1, int(counts["real"]))
        if "masked" in counts:
            statistics["masked_share"] = float(counts["masked"]) / max(1, int(counts["objects"]))
        if "penalty" in counts:
            statistics["share_penalty"] = float(counts["penalty"]) / max(1, int(counts["steps"]))
        return statistics

    def forward(self, images, captions, image_index, phrases=None):
        captioner = self.model.captioner
        with dropout_off(captioner.dropout):
            trace = self.model(images, captions, image_index)
        targets = captions[:, 1:]
        valid = targets != self.pad
        if (self.gate is not None or self.penalty > 0) and phrases is None:
            raise ValueError("FinetuneObjective: the label gates and the share penalty need the captions' object "
                             "phrases (capxai.train.label_gates.object_phrases)")
        weights = valid.to(trace.logits.dtype)
        shares = None
        if self.gate == "explanation" or self.penalty > 0:
            visual, language = visual_and_language(captioner, trace.activations)
            shares = label_share(captioner.output, visual.float(), language.float(), targets, self.eps)
        if self.gate is not None:
            masked = (gate_below_threshold(shares.detach(), phrases.heads, self.threshold) if self.gate == "explanation"
                      else phrases.hidden) & valid
            weights = weights * ~masked
            self._count(masked=masked.sum(), objects=((phrases.heads >= 0) & valid).sum())
        weighted, plain, explained = training_logits(captioner, trace, self.skipped, valid, self.eps,
                                                     self.weighting, targets)
        if self.skipped is not None:
            self._count(explained=explained.sum(), real=valid.sum())
        loss = _masked_cross_entropy(plain, targets, weights)
        loss = loss + (loss if weighted is plain else _masked_cross_entropy(weighted, targets, weights))
        if self.penalty > 0:
            penalty = share_shortfall(shares, phrases.head_positions() & valid)
            self._count(penalty=penalty.detach(), steps=1)
            loss = loss + self.penalty * penalty
        return loss


def _masked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``sum(weights * CE) / sum(weights)`` over ``[N, T]`` (0 when every weight is 0)."""
    losses = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                         reduction="none").reshape(targets.shape)
    weights = weights.to(losses.dtype)
    return (losses * weights).sum() / weights.sum().clamp_min(1.0)
