"""Hallucinated-word detection: how well a statistic of a word's explanation (or of the model itself: its
probability, the adaptive model's sentinel share) tells the object words that are hallucinated (CHAIR's ground
truth) from those that are there, as a ROC AUC with its bootstrap interval over images. Either side of a statistic
may mark the hallucinations; the detection AUC is the better reading, and each method's best statistic gets its ROC
curve."""
import dataclasses
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from sklearn.metrics import roc_curve

from capxai.evaluate.explanation_metrics.base import (EXPLANATION_METRICS, Batch, ExplanationMetric, Explained,
                                                      JsonRecord, column, format_interval, markdown_table)
from capxai.evaluate.statistics import multiplicity_ci, roc_auc, weighted_roc_auc


class _Statistics:
    """Mixin of the per-word records: their statistics are the fields after ``image`` and ``hallucinated``."""

    def statistics(self) -> Dict[str, Optional[float]]:
        """``{name: value}`` in field order (None: not defined for this model or method)."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)[2:]}


@dataclasses.dataclass(frozen=True)
class ModelStatistics(_Statistics):
    """The baseline: what the model says of one object word, ``hallucinated`` or not, in its ``image``."""

    image: int
    hallucinated: bool
    probability: float
    sentinel_share: Optional[float]  # 1 - beta: the adaptive attention model only


@dataclasses.dataclass(frozen=True)
class MapStatistics(_Statistics):
    """What one method's explanation says of one object word: its heatmap's ``mean``, ``max``, positive mass and
    the share of that mass inside any box of the image; the relevance of the preceding words (methods with word
    relevance only); ``concentration``, the share of the positive mass on the top 5 % of pixels (a few patches or
    spread); ``visual_share``, the image's part of the relevance of image and words together (methods with word
    relevance; docs/LRP_RULES.md, "Visual share of a word": clamped to [0, 1], 0 where the sum is not positive)."""

    image: int
    hallucinated: bool
    mean: float
    max: float
    positive_mass: float
    inside_share: float
    word_relevance: Optional[float]
    concentration: float = 0.0
    visual_share: Optional[float] = None


TOP_PIXELS = 0.05  # the share of pixels whose positive mass is the concentration


def concentration(heatmap: torch.Tensor) -> float:
    """The share of a map's positive mass on its top ``TOP_PIXELS`` of pixels (0 for a map with none)."""
    positive = heatmap.clamp(min=0).flatten()
    mass = float(positive.sum())
    if mass <= 0:
        return 0.0
    top = max(1, int(round(TOP_PIXELS * positive.numel())))
    return float(positive.topk(top).values.sum()) / mass


def visual_share(image: float, words: float) -> float:
    """``image / (image + words)`` clamped to [0, 1]; 0 where the sum is not positive."""
    total = image + words
    return min(1.0, max(0.0, image / total)) if total > 0 else 0.0


@dataclasses.dataclass(frozen=True)
class DetectionAUC(JsonRecord):
    """One statistic's ROC AUC (``value``) with its interval over ``images``, which side marks a hallucination
    (``higher_means``: "hallucinated" or "present"), the ``detection_auc`` (max(AUC, 1 - AUC)) and the ``words``."""

    value: float
    ci: Tuple[Optional[float], Optional[float]]
    images: int
    higher_means: str
    detection_auc: float
    words: int


@dataclasses.dataclass(frozen=True)
class BestStatistic:
    """A method's best statistic, its AUC and its ``roc`` curve (``{"fpr", "tpr"}``; json: ``{"statistic",
    **auc, "roc"}``)."""

    statistic: str
    auc: DetectionAUC
    roc: Dict[str, List[float]]

    def to_json(self) -> dict:
        return {"statistic": self.statistic, **self.auc.to_json(), "roc": self.roc}


@dataclasses.dataclass(frozen=True)
class DetectionSummary:
    """The AUC of every statistic of every method (and of the model: ``"model"``), each method's best, and the
    object ``words`` measured and how many were ``hallucinated`` (None when no word was)."""

    statistics: Dict[str, Dict[str, DetectionAUC]]
    best: Dict[str, BestStatistic]
    words: Optional[int]
    hallucinated: Optional[int]

    def to_json(self) -> dict:
        counts = {"words": self.words, "hallucinated": self.hallucinated} if self.words is not None else {}
        return {"statistics": {method: {name: auc.to_json() for name, auc in entries.items()}
                               for method, entries in self.statistics.items()},
                "best": {method: best.to_json() for method, best in self.best.items()}, **counts}


def auc_with_interval(images: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> Optional[DetectionAUC]:
    """The ROC AUC of ``scores [N]`` for ``labels [N]`` (1: hallucinated) with its bootstrap interval over the words'
    ``images [N]``; None when only one label occurs."""
    value = roc_auc(labels, scores)
    if value is None:
        return None
    present, index = np.unique(images, return_inverse=True)
    # the bootstrap over images, every resample in one pass: a word counts as often as its image is drawn
    entry = multiplicity_ci(present.size, lambda counts: weighted_roc_auc(labels, scores, counts[:, index]))
    return DetectionAUC(value=value, ci=tuple(entry["ci"]), images=entry["images"],
                        higher_means="hallucinated" if value >= 0.5 else "present",
                        detection_auc=max(value, 1 - value), words=int(labels.size))


def roc_points(labels: np.ndarray, scores: np.ndarray, higher_means: str, points: int = 101) -> dict:
    """The ROC curve of detecting hallucinated words (label 1) by ``scores`` read the way ``higher_means`` says,
    thinned to at most ``points`` points for plotting (sklearn's ``roc_curve`` drops collinear points first)."""
    oriented = scores if higher_means == "hallucinated" else -scores
    fpr, tpr, _ = roc_curve(labels, oriented)
    if fpr.size > points:
        keep = np.unique(np.linspace(0, fpr.size - 1, points).round().astype(int))
        fpr, tpr = fpr[keep], tpr[keep]
    return {"fpr": [round(float(v), 4) for v in fpr], "tpr": [round(float(v), 4) for v in tpr]}


class Detection(ExplanationMetric):
    """Hallucinated-word detection (json: ``results["detection"]``, a :class:`DetectionSummary` over the model and
    every method)."""

    path = ("detection",)
    phase = "grounding and detection"
    baseline_name = "model"

    def baseline(self, batch: Batch) -> List[ModelStatistics]:
        explanation = batch.explanation
        return [ModelStatistics(image=m.image, hallucinated=m.hallucinated,
                                probability=float(explanation.probabilities[m.row, m.t]),
                                sentinel_share=(1.0 - float(explanation.beta[m.row, m.t])
                                                if explanation.beta is not None else None))
                for m in batch.mentions]

    def measure(self, batch: Batch, explained: Explained) -> List[MapStatistics]:
        word_relevance = explained.explanation.word_relevance
        records = []
        for index, m in enumerate(batch.mentions):
            heatmap = explained.mention_maps[index].double()
            positive = heatmap.clamp(min=0)
            mass = float(positive.sum())
            words = float(word_relevance[m.row, m.t, :m.t + 1].sum()) if word_relevance is not None else None
            records.append(MapStatistics(
                image=m.image, hallucinated=m.hallucinated, mean=float(heatmap.mean()), max=float(heatmap.max()),
                positive_mass=mass, inside_share=float(positive[m.union].sum()) / mass if mass > 0 else 0.0,
                word_relevance=words, concentration=concentration(heatmap),
                visual_share=visual_share(float(heatmap.sum()), words) if words is not None else None))
        return records

    def summarise(self, records: Dict[str, list]) -> DetectionSummary:
        """The summary of ``{"model" or method: its records}``."""
        statistics, best, words, hallucinated = {}, {}, None, None
        for method, rows in records.items():
            images, labels = column(rows, lambda r: float(r.hallucinated))
            labels = labels.astype(np.int64)
            if words is None:
                words, hallucinated = int(labels.size), int(labels.sum())
            entries, scores_of = {}, {}
            for name in rows[0].statistics():
                _, scores = column(rows, lambda r, name=name: r.statistics()[name])
                if scores.size != labels.size:  # not defined for every word: not a statistic of this model
                    continue
                entry = auc_with_interval(images, labels, scores)
                if entry is not None:
                    entries[name], scores_of[name] = entry, scores
            statistics[method] = entries
            if entries:
                name = max(entries, key=lambda statistic: entries[statistic].detection_auc)
                best[method] = BestStatistic(statistic=name, auc=entries[name],
                                             roc=roc_points(labels, scores_of[name], entries[name].higher_means))
        return DetectionSummary(statistics=statistics, best=best, words=words, hallucinated=hallucinated)

    def table(self, records: Dict[str, list]) -> dict:
        return self.summarise(records).to_json()

    def markdown(self, table: Optional[dict]) -> List[str]:
        table = table or {}
        rows = [f"| {method} | {best['statistic']} | {best['higher_means']} | {best['detection_auc']:.3f} | "
                f"{format_interval(best)} |" for method, best in table.get("best", {}).items()]
        return markdown_table(f"Hallucinated-word detection ({table.get('hallucinated', 0)} hallucinated of "
                              f"{table.get('words', 0)} object words)",
                              ("method", "best statistic", "higher means", "detection AUC",
                               "ROC AUC [95 % interval]"), rows)


EXPLANATION_METRICS.register("detection", Detection(), help="ROC AUC of telling hallucinated object words from "
                             "those that are there by a statistic of the explanation, against the model's own "
                             "probability and sentinel share")
