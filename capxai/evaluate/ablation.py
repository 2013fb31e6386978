"""Ablation faithfulness (Sun et al. 2022): remove what an explanation calls most relevant and see whether the word
goes away.

* **Image**: the image is cut into a ``grid x grid`` of patches (8 x 8 by default: 28-pixel patches on 224 inputs;
  the patches shrink with the image, so k keeps its share); the ``k`` patches with the most positive relevance
  (k = 20 of 64) are blanked (set to 0 after normalisation: the data set's mean colour) and the image is decoded
  again. Reported: whether the word disappears from the new caption, and when it stays, how much its probability
  (at its first place in the new caption) dropped. Baselines: k random patches, the k patches of highest attention.
* **Words**: the ``k`` preceding words (never ``<start>``) with the highest word relevance are deleted from the
  caption's prefix, the rest is teacher-forced, and the word's probability drop is reported, against ``k`` random
  deletions. Words with at least ``min_preceding`` preceding words take part (the paper's 6).
"""
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from capxai.models import beam_search


def patch_relevance(heatmaps: torch.Tensor, grid: int = 8) -> torch.Tensor:
    """``[N, grid * grid]``: the positive relevance of each patch of ``heatmaps [N, H, W]`` (mean over the patch,
    so uneven patch sizes on sides not divisible by ``grid`` do not favour the larger ones)."""
    return F.adaptive_avg_pool2d(heatmaps.clamp(min=0).unsqueeze(1).float(), grid).flatten(1)


def most_relevant_patches(scores: torch.Tensor, k: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """``[N, k]`` patch indices with the highest ``scores [N, P]``; ties (e.g. an all-zero map) broken at random
    by ``generator`` so that a flat map ablates random patches, not the first ones."""
    if not 1 <= k <= scores.shape[1]:
        raise ValueError(f"ablation: k must be in [1, {scores.shape[1]}] patches, got {k}")
    jitter = torch.rand(scores.shape, generator=generator) * 1e-12
    return (scores.double() + jitter.double()).topk(k, dim=1).indices


def random_patches(count: int, patches: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """``[count, k]`` distinct random patch indices."""
    return torch.rand(count, patches, generator=generator).argsort(dim=1)[:, :k]


def blank_patches(images: torch.Tensor, patches: torch.Tensor, grid: int = 8) -> torch.Tensor:
    """``images [N, 3, H, W]`` with the listed patches (``[N, k]`` indices of the ``grid x grid``) set to 0."""
    keep = torch.ones(images.shape[0], grid * grid, dtype=images.dtype, device=images.device)
    keep.scatter_(1, patches.to(images.device), 0.0)
    mask = F.interpolate(keep.view(-1, 1, grid, grid), size=images.shape[-2:], mode="nearest")
    return images * mask


def image_ablation(encoder, captioner, images: torch.Tensor, words: torch.Tensor, probabilities: torch.Tensor,
                   beam_size: int, max_length: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Decodes the ablated ``images [N, 3, H, W]`` and finds each row's word (``words [N]`` token ids, whose
    probability before ablation was ``probabilities [N]``).

    Returns ``disappeared [N]`` (bool) and ``drop [N]``: the probability before minus the probability at the word's
    first place in the new caption (NaN where it disappeared)."""
    with torch.no_grad():
        decoded = beam_search(captioner, encoder(images), beam_size, max_length)
    found = decoded.tokens == words[:, None]
    disappeared = ~found.any(1)
    first = found.float().argmax(1)
    new_probability = decoded.log_probs.gather(1, first[:, None]).squeeze(1).exp()
    drop = torch.where(disappeared, torch.full_like(new_probability, float("nan")),
                       probabilities.to(new_probability.dtype) - new_probability)
    return disappeared, drop


def word_deletions(relevance: torch.Tensor, position: int, k: int) -> torch.Tensor:
    """Caption positions (1..position) of the ``k`` fed words with the highest relevance (``relevance [T]``: row
    ``position - 1`` of ``word_relevance``, index 0 = ``<start>``, never deleted)."""
    return relevance[1:position].topk(k).indices + 1


def teacher_forced_probability(captioner, features: torch.Tensor, prefixes: Sequence[torch.Tensor],
                               words: torch.Tensor) -> torch.Tensor:
    """``[N]``: the probability of ``words[n]`` after feeding ``prefixes[n]`` (``<start>`` first) on
    ``features[n]``; prefixes of different lengths run as one padded batch on ``features``' device. The result is
    on the CPU."""
    lengths = torch.tensor([len(prefix) for prefix in prefixes])
    batch = torch.zeros(len(prefixes), int(lengths.max()), dtype=torch.long)
    for row, prefix in enumerate(prefixes):
        batch[row, :len(prefix)] = prefix
    batch, words = batch.to(features.device), words.to(features.device)
    result = torch.zeros(len(prefixes), dtype=torch.float64)
    with torch.no_grad():
        state = captioner.init_state(features)
        for t in range(batch.shape[1]):
            logits, state, _ = captioner.step(state, batch[:, t])
            last = lengths == t + 1
            if bool(last.any()):
                rows = last.nonzero().squeeze(1).to(features.device)
                probabilities = torch.softmax(logits[rows].double(), -1)
                result[last] = probabilities.gather(1, words[rows][:, None]).squeeze(1).cpu()
    return result
