"""The explanation metrics, one module each, in one registry (:data:`EXPLANATION_METRICS`: name -> metric) that
:func:`capxai.evaluate.explanations.evaluate_explanations` iterates. Each metric measures a baseline and every
method's explanation of a batch as typed per-word records, and reduces them to typed summaries, written to the
results json by their ``to_json``.

A new metric is one module with an :class:`ExplanationMetric` registered here (or by a plugin: the group
``capxai.explanation_metrics``). The modules are imported in the order of measuring (see :data:`EXPLANATION_METRICS`).
"""
from capxai.evaluate.explanation_metrics.base import (EXPLANATION_METRICS, AblationMetric, Batch, Explained,
                                                      ExplanationMetric, Interval, Measurements, Mention,
                                                      PerMethodMetric, find_mentions, mean_over_images)
from capxai.evaluate.explanation_metrics.grounding import CategoryGrounding, GroundingRecord, GroundingSummary
from capxai.evaluate.explanation_metrics.image_ablation import ImageAblationRecord, ImageAblationSummary
from capxai.evaluate.explanation_metrics.insertion_deletion import InsertionDeletionRecord, InsertionDeletionSummary
from capxai.evaluate.explanation_metrics.word_ablation import WordAblationRecord, WordAblationSummary
from capxai.evaluate.explanation_metrics.detection import (BestStatistic, DetectionAUC, DetectionSummary,
                                                           MapStatistics, ModelStatistics, roc_points)

__all__ = ["EXPLANATION_METRICS", "ExplanationMetric", "PerMethodMetric", "AblationMetric", "Batch", "Explained",
           "Measurements", "Mention", "find_mentions", "Interval", "mean_over_images",
           "GroundingRecord", "CategoryGrounding", "GroundingSummary", "ImageAblationRecord", "ImageAblationSummary",
           "InsertionDeletionRecord", "InsertionDeletionSummary", "WordAblationRecord", "WordAblationSummary",
           "ModelStatistics", "MapStatistics", "DetectionAUC", "BestStatistic", "DetectionSummary", "roc_points"]
