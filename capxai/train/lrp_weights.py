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
from importlib import resources
from pathlib import Path
from typing import FrozenSet, Optional, Sequence, Tuple

import torch
from torch import nn

from capxai.data.vocabulary import SPECIALS, Vocabulary
from capxai.explain.decoder_lrp import Rules, two_term_relevance
from capxai.models.captioner import Captioner, DecoderTrace
from capxai.ops.reference import stabilize

METHODS = ("lrp", "baseline")


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


def _normalised(relevance: torch.Tensor) -> torch.Tensor:
    """``R / max_d |R_d| + 1`` per row; a row of zeros gives 1."""
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
                    skipped: torch.Tensor, valid: Optional[torch.Tensor] = None,
                    eps: float = 0.01) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The weights of the output layer's two inputs for the model's own top word at every step.

    Args:
        output: the output layer ``W_o, b_o``. first, second: its two inputs ``[..., H]`` (before dropout).
        logits: ``W_o (first + second) + b_o`` without dropout, ``[..., V]``.
        skipped: ``[V]`` bool, words that get weight 1 (``stop_word_mask``). valid: ``[...]`` bool, steps to
            weigh (None: all); the others get 1. eps: the epsilon rule's stabiliser.
    Returns:
        ``(weights_first, weights_second, explained)``: ``[..., H]`` each, in ``[0, 2]``, no gradient; ``explained
        [...]`` marks the steps whose top word was explained.
    """
    # in the output layer's precision (float32) under autocast too: the epsilon rule divides by the logit
    dtype = output.weight.dtype
    first, second, logits = first.to(dtype), second.to(dtype), logits.to(dtype)
    top = logits.argmax(-1)
    explained = ~skipped.to(top.device)[top]
    if valid is not None:
        explained &= valid
    weights_first, weights_second = torch.ones_like(first), torch.ones_like(second)
    rows = explained.nonzero(as_tuple=True)
    if rows[0].numel():
        picked_top = top[rows]
        first_rows, second_rows = first[rows], second[rows]
        relevance_total = _explained_output_relevance(output, first_rows + second_rows, logits[rows], picked_top, eps)
        relevance_first, relevance_second = two_term_relevance(first_rows, second_rows, relevance_total, Rules(eps))
        weights_first[rows] = _normalised(relevance_first)
        weights_second[rows] = _normalised(relevance_second)
    return weights_first, weights_second, explained


def training_logits(captioner: Captioner, trace: DecoderTrace, skipped: Optional[torch.Tensor],
                    valid: Optional[torch.Tensor] = None, eps: float = 0.01):
    """``(weighted_logits, plain_logits, explained)`` of a teacher-forced ``trace`` computed with dropout off (so
    ``trace.logits`` are the inference logits whose top word is explained); both training logits share one dropout
    mask. ``skipped = None`` (baseline fine-tuning) gives no weights: ``weighted_logits`` is ``plain_logits``."""
    first, second = (trace.activations[name] for name in captioner.output_terms)
    mask = captioner.dropout(torch.ones_like(first))
    plain = captioner.output(mask * (first + second))
    if skipped is None:
        return plain, plain, torch.zeros(first.shape[:-1], dtype=torch.bool, device=first.device)
    weights_first, weights_second, explained = feature_weights(captioner.output, first, second, trace.logits,
                                                               skipped, valid, eps)
    weighted = captioner.output(mask * (weights_first * first + weights_second * second))
    return weighted, plain, explained


class FinetuneObjective(nn.Module):
    """The cross-entropy fine-tuning loss as a module (so DistributedDataParallel can wrap it): ``forward(images,
    captions [N, L], image_index [N])`` -> ``CE(weighted logits) + CE(plain logits)`` (mean over real words each).
    ``skipped = None`` is baseline fine-tuning: the same two terms with unit weights, i.e. ``2 CE(plain)``, so the
    two methods differ in the weights alone (same gradient scale, same clipping)."""

    def __init__(self, model: nn.Module, skipped: Optional[torch.Tensor], eps: float = 0.01, pad: int = 0):
        super().__init__()
        self.model, self.eps, self.pad = model, eps, pad
        self.register_buffer("skipped", skipped, persistent=False)
        self.explained_words = self.real_words = 0  # since the last ``take_statistics``

    def take_statistics(self) -> dict:
        """The share of real words whose top word was explained (weighted) since the last call; resets."""
        share = float(self.explained_words) / max(1, int(self.real_words))
        self.explained_words = self.real_words = 0
        return {"explained_share": share}

    def forward(self, images, captions, image_index):
        captioner = self.model.captioner
        with dropout_off(captioner.dropout):
            trace = self.model(images, captions, image_index)
        targets = captions[:, 1:]
        valid = targets != self.pad
        weighted, plain, explained = training_logits(captioner, trace, self.skipped, valid, self.eps)
        # kept as tensors: reading them every step would stall a GPU
        self.explained_words = self.explained_words + explained.sum()
        self.real_words = self.real_words + valid.sum()
        vocab = plain.shape[-1]
        loss = nn.functional.cross_entropy(plain.reshape(-1, vocab), targets.reshape(-1), ignore_index=self.pad)
        if weighted is plain:
            return loss + loss
        return loss + nn.functional.cross_entropy(weighted.reshape(-1, vocab), targets.reshape(-1),
                                                  ignore_index=self.pad)
