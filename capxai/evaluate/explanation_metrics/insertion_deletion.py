"""Insertion / deletion areas of the object words that are there (not hallucinated), the patches taken in the order
of the method's map (the curves: :mod:`capxai.evaluate.faithfulness`), against a random order."""
import dataclasses
from typing import List, Optional

import torch

from capxai.evaluate import ablation, faithfulness
from capxai.evaluate.explanation_metrics.base import (EXPLANATION_METRICS, AblationMetric, Batch, Explained, Interval,
                                                      JsonRecord, column, format_interval, markdown_table,
                                                      mean_over_images)


@dataclasses.dataclass(frozen=True)
class InsertionDeletionRecord:
    """One word's ``image`` and the areas under its probability as the patches are revealed (``insertion_auc``)
    and removed (``deletion_auc``)."""

    image: int
    insertion_auc: float
    deletion_auc: float


@dataclasses.dataclass(frozen=True)
class InsertionDeletionSummary(JsonRecord):
    """Mean areas (json: ``{"insertion_auc", "deletion_auc"}``)."""

    insertion_auc: Interval
    deletion_auc: Interval


class InsertionDeletion(AblationMetric):
    """Insertion / deletion areas (json: ``results["ablation"]["insertion_deletion"][method]``, an
    :class:`InsertionDeletionSummary`)."""

    path = ("ablation", "insertion_deletion")
    written_empty = False  # results from before the curves have no such table: readers take it as optional

    def baseline(self, batch: Batch) -> List[InsertionDeletionRecord]:
        return _records(batch, batch.explanation, None)

    def measure(self, batch: Batch, explained: Explained) -> List[InsertionDeletionRecord]:
        return _records(batch, explained.explanation, explained.mention_maps)

    def summarise(self, records: List[InsertionDeletionRecord]) -> InsertionDeletionSummary:
        return InsertionDeletionSummary(insertion_auc=mean_over_images(*column(records, lambda r: r.insertion_auc)),
                                        deletion_auc=mean_over_images(*column(records, lambda r: r.deletion_auc)))

    def markdown(self, table: Optional[dict]) -> List[str]:
        if not table:
            return []
        rows = [f"| {method} | {entry['insertion_auc']['words']} | {format_interval(entry['insertion_auc'])} | "
                f"{format_interval(entry['deletion_auc'])} |" for method, entry in table.items()]
        return markdown_table("Insertion / deletion (area under the word's probability as the most relevant patches "
                              "are revealed / removed)", ("method", "words", "insertion AUC (higher: faithful)",
                                                          "deletion AUC (lower: faithful)"), rows)


def _records(batch: Batch, explanation, maps: Optional[torch.Tensor]) -> List[InsertionDeletionRecord]:
    """The curves of the words that are there, patches in the order of ``maps [mentions, H, W]`` (None: a random
    order); ``explanation``: their captions."""
    rows = [i for i, m in enumerate(batch.mentions) if not m.hallucinated]
    if not rows:
        return []
    chosen = [batch.mentions[i] for i in rows]
    settings, model = batch.settings, batch.model
    patches = settings.grid ** 2
    if maps is None:
        order = ablation.random_patches(len(chosen), patches, patches, batch.generator)
    else:
        order = ablation.most_relevant_patches(ablation.patch_relevance(maps[rows], settings.grid), patches,
                                               batch.generator)
    prefixes = [explanation.captions[m.row, :m.t + 1] for m in chosen]
    result = faithfulness.curves(model.encoder, model.captioner, batch.images[[m.row for m in chosen]], prefixes,
                                 torch.tensor([m.word for m in chosen]), order, settings.grid, settings.curve_steps)
    return [InsertionDeletionRecord(image=m.image, insertion_auc=inserted, deletion_auc=deleted)
            for m, inserted, deleted in zip(chosen, result["insertion_auc"].tolist(), result["deletion_auc"].tolist())]


EXPLANATION_METRICS.register("insertion_deletion", InsertionDeletion(), help="areas under the word's probability as "
                             "the most relevant patches are revealed (insertion) or removed (deletion), against a "
                             "random order")
