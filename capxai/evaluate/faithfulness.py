"""Insertion and deletion faithfulness (Petsiuk et al. 2018, RISE): the explained word's probability as the image's
patches are removed (deletion) or revealed on a blank image (insertion) in the order an explanation ranks them, most
relevant first. A faithful map makes the deletion curve fall fast (small area) and the insertion curve rise fast
(large area). The caption is kept and teacher-forced, so the curve is the word's probability at its own place.

Patches are those of the ablation (``grid x grid``; blank = 0 after normalisation, the data set's mean colour); the
curve is read at ``steps + 1`` evenly spaced fractions of the patches (0 .. all), and its area is the trapezoid
rule over the fraction in [0, 1]. Quantus's ``RegionPerturbation`` computes such curves for classifiers (one
``model(x) -> scores`` call per step); here the score is a word's probability inside a caption, so the loop is kept
to the captioner's own teacher forcing (batched over words).
"""
from typing import Dict

import numpy as np
import torch
import torch.nn.functional as F

from capxai.evaluate.ablation import teacher_forced_probability


def patch_masks(order: torch.Tensor, count: int, grid: int, size) -> torch.Tensor:
    """``[N, 1, H, W]``: 1 on the first ``count`` patches of each row's ``order [N, P]``, 0 elsewhere."""
    chosen = torch.zeros(order.shape[0], grid * grid)
    if count > 0:
        chosen.scatter_(1, order[:, :count].cpu(), 1.0)
    return F.interpolate(chosen.view(-1, 1, grid, grid), size=tuple(size), mode="nearest")


def curves(encoder, captioner, images: torch.Tensor, prefixes, words: torch.Tensor, order: torch.Tensor,
           grid: int = 8, steps: int = 8) -> Dict[str, np.ndarray]:
    """Deletion and insertion curves ``[N, steps + 1]`` (probabilities) of ``words[n]`` after ``prefixes[n]`` on
    ``images [N, 3, H, W]``, patches taken in ``order [N, grid * grid]`` (most relevant first), and their areas
    ``[N]`` (``deletion_auc``, ``insertion_auc``)."""
    patches = grid * grid
    if order.shape != (images.shape[0], patches):
        raise ValueError(f"faithfulness: order must be [N, {patches}] patch indices, got {list(order.shape)}")
    if steps < 1:
        raise ValueError(f"faithfulness: steps must be >= 1, got {steps}")
    counts = np.linspace(0, patches, steps + 1).round().astype(int)
    deletion, insertion = [], []
    with torch.no_grad():
        for count in counts.tolist():
            mask = patch_masks(order, count, grid, images.shape[-2:]).to(images.device, images.dtype)
            for curve, shown in ((deletion, images * (1 - mask)), (insertion, images * mask)):
                curve.append(teacher_forced_probability(captioner, encoder(shown), prefixes, words).numpy())
    deletion, insertion = np.stack(deletion, 1), np.stack(insertion, 1)
    fractions = counts / patches
    return {"fractions": fractions, "deletion": deletion, "insertion": insertion,
            "deletion_auc": np.trapezoid(deletion, fractions, axis=1),
            "insertion_auc": np.trapezoid(insertion, fractions, axis=1)}
