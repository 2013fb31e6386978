"""Image ablation of the object words that are there (not hallucinated): the ``patches`` most relevant of the
``grid x grid`` patches are blanked and the image decoded again (the measure: :mod:`capxai.evaluate.ablation`),
against as many random patches."""
import dataclasses
from typing import List, Optional

import torch

from capxai.evaluate import ablation
from capxai.evaluate.explanation_metrics.base import (EXPLANATION_METRICS, AblationMetric, Batch, Explained, Interval,
                                                      JsonRecord, column, format_interval, markdown_table,
                                                      mean_over_images)


@dataclasses.dataclass(frozen=True)
class ImageAblationRecord:
    """One word's ``image``, whether it ``disappeared`` from the caption of the ablated image, and when it stayed,
    the ``drop`` of its probability (NaN when it disappeared)."""

    image: int
    disappeared: bool
    drop: float


@dataclasses.dataclass(frozen=True)
class ImageAblationSummary(JsonRecord):
    """Share of words that disappeared and mean probability drop of those that stayed (json:
    ``{"disappeared", "probability_drop"}``)."""

    disappeared: Interval
    probability_drop: Interval


class ImageAblation(AblationMetric):
    """Image ablation (json: ``results["ablation"]["image"][method]``, an :class:`ImageAblationSummary`)."""

    path = ("ablation", "image")

    def baseline(self, batch: Batch) -> List[ImageAblationRecord]:
        settings = batch.settings
        # drawn for every mention, hallucinated or not, so that the draws do not depend on which words are there
        patches = ablation.random_patches(len(batch.mentions), settings.grid ** 2, settings.patches, batch.generator)
        return _records(batch, batch.explanation, patches)

    def measure(self, batch: Batch, explained: Explained) -> List[ImageAblationRecord]:
        if explained.mention_maps is None:
            return []
        settings = batch.settings
        patches = ablation.most_relevant_patches(ablation.patch_relevance(explained.mention_maps, settings.grid),
                                                 settings.patches, batch.generator)
        return _records(batch, explained.explanation, patches)

    def summarise(self, records: List[ImageAblationRecord]) -> ImageAblationSummary:
        return ImageAblationSummary(disappeared=mean_over_images(*column(records, lambda r: float(r.disappeared))),
                                    probability_drop=mean_over_images(*column(records, lambda r: r.drop)))

    def markdown(self, table: Optional[dict]) -> List[str]:
        rows = [f"| {method} | {entry['disappeared']['words']} | {format_interval(entry['disappeared'])} | "
                f"{format_interval(entry['probability_drop'])} |" for method, entry in (table or {}).items()]
        return markdown_table("Image ablation (k most relevant patches blanked)",
                              ("method", "words", "disappeared", "probability drop (word stays)"), rows)


def _records(batch: Batch, explanation, patches: torch.Tensor) -> List[ImageAblationRecord]:
    """Ablates ``patches [mentions, k]`` of the words that are there; ``explanation``: their probabilities."""
    rows = [i for i, m in enumerate(batch.mentions) if not m.hallucinated]
    if not rows:
        return []
    chosen = [batch.mentions[i] for i in rows]
    settings, images = batch.settings, batch.images
    blanked = ablation.blank_patches(images[[m.row for m in chosen]], patches[rows], settings.grid)
    words = torch.tensor([m.word for m in chosen], device=images.device)
    before = torch.stack([explanation.probabilities[m.row, m.t] for m in chosen]).to(images.device)
    disappeared, drop = ablation.image_ablation(batch.model.encoder, batch.model.captioner, blanked, words, before,
                                                settings.beam_size, settings.max_length)
    return [ImageAblationRecord(image=m.image, disappeared=bool(gone), drop=fall)
            for m, gone, fall in zip(chosen, disappeared.tolist(), drop.tolist())]


EXPLANATION_METRICS.register("image_ablation", ImageAblation(), help="blank the most relevant patches of the image: "
                             "does the word disappear, how far does its probability drop (against random patches)")
