"""Self-critical sequence training (Rennie et al. 2017) with a CIDEr-D reward, plain or LRP-weighted (Sun et al.
2022): sample captions, reward each by CIDEr-D minus the CIDEr-D of the model's greedy caption of the same image,
and raise the log-probability of the samples in proportion.

For ``--method lrp`` the captions are sampled from the LRP-weighted logits (``lrp_weights``) and their
log-probabilities are those of the weighted logits; the greedy baseline is the plain model's (inference is
unchanged). Sampling and re-scoring both run with the captioner's dropout off and share one encoding of the images,
so the gradient is that of the policy that sampled.
Re-scoring is teacher-forced, batched over samples and steps.
"""
import functools
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from capxai._optional import require
from capxai.models import beam_search
from capxai.models.captioner import Captioner
from capxai.train.lrp_weights import dropout_off, feature_weights, training_logits


@functools.cache
def _cider_scorers():
    """pycocoevalcap's CiderScorer and ``CorpusCiderScorer``: its CIDEr-D with document frequencies of a fixed corpus
    (its ``compute_cider`` would set the corpus size to the batch's; the property keeps the corpus's). Imported on
    first use: ``capxai.train`` imports this module, and a machine that only runs the ops (a GPU check) lacks
    pycocoevalcap."""
    CiderScorer = require("pycocoevalcap.cider.cider_scorer", "SCST's CIDEr reward").CiderScorer

    class CorpusCiderScorer(CiderScorer):
        corpus_size = 1

        @property
        def ref_len(self):
            return np.log(float(self.corpus_size))

        @ref_len.setter
        def ref_len(self, value):
            pass

    return CiderScorer, CorpusCiderScorer


class _DocumentFrequency(dict):
    """n-gram -> document frequency; an unseen n-gram reads 0 without being stored (pycocoevalcap keeps a
    defaultdict, which would grow with every sampled n-gram over training)."""

    def __missing__(self, ngram):
        return 0.0


class CiderReward:
    """CIDEr-D of captions against references, with n-gram document frequencies from a fixed reference corpus (the
    training split, as self-critical.pytorch), so a caption's reward does not depend on its batch.

    Args:
        corpus: every reference set of the corpus (a list of caption strings per image).
    """

    def __init__(self, corpus: Sequence[Sequence[str]]):
        if not corpus:
            raise ValueError("CiderReward: the reference corpus is empty")
        cider_scorer, _ = _cider_scorers()
        scorer = cider_scorer(n=4, sigma=6.0)
        for references in corpus:
            scorer.cook_append(None, list(references))
        scorer.compute_doc_freq()
        self.document_frequency = _DocumentFrequency(scorer.document_frequency)
        self.corpus_size = len(corpus)

    def __call__(self, captions: Sequence[str], references: Sequence[Sequence[str]]) -> np.ndarray:
        """``[N]`` CIDEr-D of ``captions[i]`` against ``references[i]``."""
        if len(captions) != len(references):
            raise ValueError(f"CiderReward: {len(captions)} captions but {len(references)} reference sets")
        _, corpus_cider_scorer = _cider_scorers()
        scorer = corpus_cider_scorer(n=4, sigma=6.0)
        scorer.corpus_size = self.corpus_size
        for caption, refs in zip(captions, references):
            scorer.cook_append(caption, list(refs))
        scorer.document_frequency = self.document_frequency
        return np.asarray(scorer.compute_cider(), dtype=np.float64)


def self_critical_advantage(reward: CiderReward, samples: Sequence[str], greedy: Sequence[str],
                            references: Sequence[Sequence[str]]) -> np.ndarray:
    """``CIDEr-D(sample) - CIDEr-D(greedy caption of its image)`` per sample (``greedy`` and ``references`` given
    per sample, repeated for samples of one image)."""
    return reward(samples, references) - reward(greedy, references)


@torch.no_grad()
def sample_captions(captioner: Captioner, features: torch.Tensor, max_length: int, skipped: Optional[torch.Tensor],
                    generator: Optional[torch.Generator] = None, start: int = 1, end: int = 2,
                    pad: int = 0, eps: float = 0.01) -> torch.Tensor:
    """One caption per row of ``features [N, regions, C]``, each word drawn from the softmax of the step's logits
    (LRP-weighted when ``skipped`` is given, else plain; never ``<start>`` or ``<pad>``). Returns ``[N, L]`` word
    indices, ``<end>`` then ``<pad>`` after a caption ends."""
    state = captioner.init_state(features)
    words = torch.full((features.shape[0],), start, dtype=torch.long, device=features.device)
    finished = torch.zeros_like(words, dtype=torch.bool)
    never = torch.tensor([start, pad], device=features.device)  # words a sample may not draw
    sampled = []
    for _ in range(max_length):
        logits, state, trace = captioner.step(state, words)
        if skipped is not None:
            first, second = (trace[name] for name in captioner.output_terms)
            weights_first, weights_second, _ = feature_weights(captioner.output, first, second, logits, skipped,
                                                               eps=eps)
            logits = captioner.output(weights_first * first + weights_second * second)
        logits = logits.float().index_fill(-1, never, float("-inf"))
        words = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator).squeeze(1)
        words = torch.where(finished, torch.full_like(words, pad), words)
        sampled.append(words)
        finished |= words == end
        if bool(finished.all()):
            break
    return torch.stack(sampled, dim=1)


def sequence_log_probs(captioner: Captioner, features: torch.Tensor, tokens: torch.Tensor,
                       skipped: Optional[torch.Tensor], start: int = 1, pad: int = 0,
                       eps: float = 0.01) -> torch.Tensor:
    """``[N]`` summed log-probability of each caption ``tokens [N, L]`` (words after ``<start>``, ``<end>``
    included, then pads), under the weighted (``skipped`` given) or plain logits, teacher-forced, with gradient."""
    captions = torch.cat([torch.full_like(tokens[:, :1], start), tokens], dim=1)
    trace = captioner(features, captions, pad=pad)
    valid = tokens != pad
    weighted, _, _ = training_logits(captioner, trace, skipped, valid, eps)
    picked = torch.log_softmax(weighted, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return (picked * valid).sum(-1)


def scst_loss(model: nn.Module, images: torch.Tensor, references: List[List[str]], words: List[str],
              reward: CiderReward, skipped: Optional[torch.Tensor], samples_per_image: int, max_length: int,
              generator: Optional[torch.Generator] = None, eps: float = 0.01,
              special: Optional[Dict[str, int]] = None) -> Tuple[torch.Tensor, Dict[str, float]]:
    """The self-critical loss of one batch: ``-sum_n advantage_n * log p(sample_n) / (words of all samples)`` (the
    paper's normalisation, ``<end>`` counted as a word) and statistics
    (mean reward of the samples and of the greedy captions).

    ``references[b]`` are image b's reference captions (token strings), ``words`` the vocabulary's words; ``special``
    maps "start", "end", "pad" to their indices."""
    special = special or {"start": 1, "end": 2, "pad": 0}
    captioner = model.captioner
    with dropout_off(captioner.dropout):
        features = model.encoder(images)
        greedy = beam_search(captioner, features.detach(), 1, max_length, special["start"], special["end"],
                             special["pad"]).tokens
        repeated = features.repeat_interleave(samples_per_image, 0)
        samples = sample_captions(captioner, repeated.detach(), max_length, skipped, generator, special["start"],
                                  special["end"], special["pad"], eps)
        log_probs = sequence_log_probs(captioner, repeated, samples, skipped, special["start"], special["pad"], eps)

    def text(tokens):
        return " ".join(words[i] for i in tokens.tolist() if i not in special.values()) or "<unk>"

    sample_text = [text(row) for row in samples]
    greedy_text = [text(greedy[n // samples_per_image]) for n in range(len(samples))]
    sample_references = [references[n // samples_per_image] for n in range(len(samples))]
    sample_reward = reward(sample_text, sample_references)
    greedy_reward = reward(greedy_text, sample_references)
    advantage = torch.as_tensor(sample_reward - greedy_reward, dtype=log_probs.dtype, device=log_probs.device)
    words_sampled = max(1, int((samples != special["pad"]).sum()))
    loss = -(advantage * log_probs).sum() / words_sampled
    return loss, {"reward": float(sample_reward.mean()), "greedy_reward": float(greedy_reward.mean())}
