"""Do explanations point at the object a word names? (Sun et al. 2022, "correctness"; the pointing game of Zhang et
al. 2018.)

For one explained word and the boxes of the category it names:

* **grounding at threshold** ``τ``: the heatmap's positive part, divided by its maximum (so in [0, 1]); values at or
  below ``τ`` are zeroed; the score is the mass inside the category's best box (the box holding most) over the
  total mass. A map with no positive value scores 0 (the paper's convention).
* **pointing game**: whether the heatmap's maximum lies in a box of the category (boxes grown by ``tolerance``
  pixels). When several pixels share the maximum (a flat map), the hit counts as the share of them inside, which is
  the hit rate of a random choice among them: a uniform map scores the boxes' area share, not 1.
"""
from typing import List, Sequence, Tuple

import torch

THRESHOLDS = tuple(round(0.1 * step, 1) for step in range(10))


def box_masks(boxes: Sequence[Tuple[float, float, float, float]], image_size: Tuple[int, int],
              map_size: Tuple[int, int], tolerance: float = 0.0) -> torch.Tensor:
    """``[N, H, W]`` bool: the pixels of a ``map_size = (H, W)`` heatmap whose centres lie in each box.

    Args:
        boxes: N COCO boxes ``(x, y, width, height)`` in pixels of the original image.
        image_size: the original image's ``(width, height)`` (boxes are scaled to the map).
        tolerance: grow every box by this many map pixels on each side (pointing game).
    """
    height, width = map_size
    scale_x, scale_y = width / image_size[0], height / image_size[1]
    columns = torch.arange(width, dtype=torch.float64) + 0.5
    rows = torch.arange(height, dtype=torch.float64) + 0.5
    masks = torch.zeros(len(boxes), height, width, dtype=torch.bool)
    for index, (x, y, w, h) in enumerate(boxes):
        left, right = x * scale_x - tolerance, (x + w) * scale_x + tolerance
        top, bottom = y * scale_y - tolerance, (y + h) * scale_y + tolerance
        inside_x = (columns >= left) & (columns <= right)
        inside_y = (rows >= top) & (rows <= bottom)
        masks[index] = inside_y[:, None] & inside_x[None, :]
    return masks


def normalised_positive(heatmaps: torch.Tensor) -> torch.Tensor:
    """``[N, H, W]``: the positive part of each map divided by its maximum (an all-non-positive map stays 0)."""
    positive = heatmaps.clamp(min=0)
    peak = positive.flatten(1).amax(1).clamp(min=torch.finfo(positive.dtype).tiny)
    return positive / peak[:, None, None]


def grounding_scores(heatmaps: torch.Tensor, masks: List[torch.Tensor],
                     thresholds: Sequence[float] = THRESHOLDS) -> torch.Tensor:
    """``[N, len(thresholds)]``: each map's mass in its best box over its total mass, after zeroing the values at
    or below each threshold (module docstring).

    Args:
        heatmaps: ``[N, H, W]`` pixel relevance (any sign; only the positive part counts).
        masks: N bool tensors ``[boxes_n, H, W]``: the boxes of the category each map's word names.
    """
    if heatmaps.dim() != 3 or len(masks) != heatmaps.shape[0]:
        raise ValueError(f"grounding_scores: heatmaps must be [N, H, W] with one box mask set per map, got "
                         f"{list(heatmaps.shape)} and {len(masks)} mask sets")
    maps = normalised_positive(heatmaps.double())
    scores = torch.zeros(maps.shape[0], len(thresholds), dtype=torch.float64)
    for index, (heatmap, boxes) in enumerate(zip(maps, masks)):
        if boxes.shape[-2:] != heatmap.shape or boxes.shape[0] == 0:
            raise ValueError(f"grounding_scores: map {index} needs at least one [H, W] = {list(heatmap.shape)} box "
                             f"mask, got {list(boxes.shape)}")
        kept = torch.stack([torch.where(heatmap > threshold, heatmap, torch.zeros_like(heatmap))
                            for threshold in thresholds])  # [thresholds, H, W]
        total = kept.flatten(1).sum(1)
        inside = (kept[:, None] * boxes[None].double()).flatten(2).sum(2).amax(1)  # best box per threshold
        scores[index] = torch.where(total > 0, inside / total.clamp(min=1e-300), torch.zeros_like(total))
    return scores


def pointing_game(heatmaps: torch.Tensor, masks: List[torch.Tensor]) -> torch.Tensor:
    """``[N]`` in [0, 1]: whether each map's maximum falls in one of its boxes (ties: the share of the maximal
    pixels inside; module docstring). ``masks`` as in :func:`grounding_scores` (grow them for a tolerance)."""
    if heatmaps.dim() != 3 or len(masks) != heatmaps.shape[0]:
        raise ValueError(f"pointing_game: heatmaps must be [N, H, W] with one box mask set per map, got "
                         f"{list(heatmaps.shape)} and {len(masks)} mask sets")
    hits = torch.zeros(heatmaps.shape[0], dtype=torch.float64)
    for index, (heatmap, boxes) in enumerate(zip(heatmaps, masks)):
        peak = heatmap == heatmap.max()
        hits[index] = (peak & boxes.any(0)).sum() / peak.sum()
    return hits
