"""Grounding and pointing game of the object words an image has boxes for (the measures: :mod:`capxai.evaluate.
grounding`), against a uniform map; with the means per category."""
import dataclasses
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from capxai.evaluate.explanation_metrics.base import (EXPLANATION_METRICS, Batch, Explained, Interval, JsonRecord,
                                                      PerMethodMetric, column, format_interval, markdown_table,
                                                      mean_over_images)
from capxai.evaluate.grounding import THRESHOLDS, grounding_scores, pointing_game

CATEGORY_THRESHOLDS = (0.0, 0.5)  # the thresholds of the per-category means


@dataclasses.dataclass(frozen=True)
class GroundingRecord:
    """One grounded word: its ``image``, the ``category`` it names, its ``scores`` at every threshold of
    :data:`~capxai.evaluate.grounding.THRESHOLDS` and its pointing-game hit (in [0, 1])."""

    image: int
    category: str
    scores: Tuple[float, ...]
    pointing: float


@dataclasses.dataclass(frozen=True)
class CategoryGrounding:
    """Plain means over the words naming one category (json: ``{"words", "t0.0", "t0.5", "pointing_game"}``)."""

    words: int
    scores: Tuple[float, ...]  # at CATEGORY_THRESHOLDS
    pointing_game: float

    def to_json(self) -> dict:
        return {"words": self.words, **{f"t{threshold}": score for threshold, score in
                                        zip(CATEGORY_THRESHOLDS, self.scores)},
                "pointing_game": self.pointing_game}


@dataclasses.dataclass(frozen=True)
class GroundingSummary(JsonRecord):
    """A method's grounding at every threshold and its pointing game, with intervals; the plain means per category
    (json: ``{"thresholds": {"0.0": interval, ...}, "pointing_game": interval, "per_category": {category: ...}}``)."""

    thresholds: Dict[str, Interval]
    pointing_game: Interval
    per_category: Dict[str, CategoryGrounding]


class Grounding(PerMethodMetric):
    """Grounding at every threshold and pointing game of the words an image has boxes for (json: ``results["grounding"]
    [method]``, a :class:`GroundingSummary`); baseline: ``"uniform"``."""

    path = ("grounding",)
    phase = "grounding and detection"
    baseline_name = "uniform"

    def baseline(self, batch: Batch) -> List[GroundingRecord]:
        """A uniform map: its grounding is the boxes' area share."""
        grounded = [m for m in batch.mentions if m.boxes is not None]
        if not grounded:
            return []
        return _records(torch.ones(len(grounded), *batch.images.shape[-2:]), grounded)

    def measure(self, batch: Batch, explained: Explained) -> List[GroundingRecord]:
        rows = [i for i, m in enumerate(batch.mentions) if m.boxes is not None]
        if not rows:
            return []
        return _records(explained.mention_maps[rows], [batch.mentions[i] for i in rows])

    def summarise(self, records: List[GroundingRecord]) -> GroundingSummary:
        thresholds = {str(threshold): mean_over_images(*column(records, lambda r, i=index: r.scores[i]))
                      for index, threshold in enumerate(THRESHOLDS)}
        categories = np.asarray([record.category for record in records])
        scores = [np.asarray([record.scores[THRESHOLDS.index(threshold)] for record in records])
                  for threshold in CATEGORY_THRESHOLDS]
        pointing = np.asarray([record.pointing for record in records])
        per_category = {}
        for category in sorted(set(categories.tolist())):
            chosen = categories == category
            per_category[category] = CategoryGrounding(
                words=int(chosen.sum()), scores=tuple(float(values[chosen].mean()) for values in scores),
                pointing_game=float(pointing[chosen].mean()))
        return GroundingSummary(thresholds=thresholds,
                                pointing_game=mean_over_images(*column(records, lambda r: r.pointing)),
                                per_category=per_category)

    def markdown(self, table: Optional[dict]) -> List[str]:
        rows = [f"| {method} | {entry['pointing_game']['words']} | {format_interval(entry['thresholds']['0.0'])} | "
                f"{format_interval(entry['thresholds']['0.5'])} | {format_interval(entry['pointing_game'])} |"
                for method, entry in (table or {}).items()]
        return markdown_table("Grounding (relevance in the best box) and pointing game",
                              ("method", "words", "threshold 0", "threshold 0.5", "pointing game"), rows)


def _records(maps: torch.Tensor, grounded) -> List[GroundingRecord]:
    """The records of ``maps [N, H, W]``, the heatmaps of the ``grounded`` mentions."""
    scores = grounding_scores(maps, [m.boxes for m in grounded])
    hits = pointing_game(maps, [m.pointing_boxes for m in grounded])
    return [GroundingRecord(image=m.image, category=m.category, scores=tuple(score), pointing=hit)
            for m, score, hit in zip(grounded, scores.tolist(), hits.tolist())]


EXPLANATION_METRICS.register("grounding", Grounding(), help="share of positive relevance in the named object's best "
                             "box at thresholds 0..0.9, and the pointing game, against a uniform map")
