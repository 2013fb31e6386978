"""The ground-truth object phrases of teacher-forced captions, and what capxai's fine-tuning methods do with them
(``capxai.train.methods``): mask a phrase's cross-entropy when the visual share of its head noun is low
(``gated``) or when the annotations mark it hidden (``oracle``), or penalise a low share (``share-penalty``).

Positions are target positions: ``captions[:, 1:]``, the word predicted at each step.
"""
import dataclasses
from typing import Mapping, Optional, Sequence, Set

import torch

from capxai.data.vocabulary import END, PAD


@dataclasses.dataclass
class ObjectPhrases:
    """``heads [N, T]``: at each target position inside an object phrase, the position of the phrase's head noun
    (its last word), -1 elsewhere; ``hidden [N, T]``: positions of phrases whose category the annotations mark
    hidden in the caption's image (all False without annotations)."""

    heads: torch.Tensor
    hidden: torch.Tensor

    def head_positions(self) -> torch.Tensor:
        """``[N, T]`` bool: the head nouns."""
        return self.heads == torch.arange(self.heads.shape[1], device=self.heads.device)


def object_phrases(captions: torch.Tensor, image_ids: torch.Tensor, words: Sequence[str], objects,
                   hidden: Optional[Mapping[int, Set[str]]] = None) -> ObjectPhrases:
    """The object phrases of ``captions [N, L]`` (token ids, ``<start>`` first) of images ``image_ids [N]``, read
    by ``objects`` (:class:`~capxai.evaluate.objects.ObjectWords`); ``hidden``: image id -> categories annotated
    hidden there (``SplitAnnotations.hidden``), needed for ``ObjectPhrases.hidden``."""
    targets = captions[:, 1:].tolist()
    heads = torch.full((len(targets), captions.shape[1] - 1), -1, dtype=torch.long)
    hidden_mask = torch.zeros(heads.shape, dtype=torch.bool)
    closing = {PAD, END}
    for row, (tokens, image_id) in enumerate(zip(targets, image_ids.tolist())):
        caption = []
        for token in tokens:
            if words[token] in closing:
                break
            caption.append(words[token])
        hidden_here = hidden.get(int(image_id), set()) if hidden is not None else set()
        for mention in objects.find(caption):
            heads[row, mention.start:mention.end] = mention.end - 1
            if mention.category in hidden_here:
                hidden_mask[row, mention.start:mention.end] = True
    return ObjectPhrases(heads.to(captions.device), hidden_mask.to(captions.device))


def gate_below_threshold(shares: torch.Tensor, heads: torch.Tensor, threshold: float) -> torch.Tensor:
    """``[N, T]`` bool: positions of object phrases whose head noun's share (``shares [N, T]``) is below
    ``threshold``."""
    head_shares = shares.gather(1, heads.clamp_min(0))
    return (heads >= 0) & (head_shares < threshold)


def share_shortfall(shares: torch.Tensor, head_positions: torch.Tensor) -> torch.Tensor:
    """The share penalty: ``mean(1 - share)`` over the head nouns (0 without any), differentiable in ``shares``."""
    count = head_positions.sum()
    return ((1.0 - shares) * head_positions).sum() / count.clamp_min(1)
