"""Word ablation of every word with at least ``min_preceding`` preceding words: its ``deleted_words`` most relevant
preceding words are deleted and the rest teacher-forced (the measure: :mod:`capxai.evaluate.ablation`), against as
many random deletions. Methods without word relevance have no row."""
import dataclasses
from typing import List, Optional

import torch

from capxai.evaluate import ablation
from capxai.evaluate.explanation_metrics.base import (EXPLANATION_METRICS, AblationMetric, Batch, Explained, Interval,
                                                      JsonRecord, column, format_interval, markdown_table,
                                                      mean_over_images)


@dataclasses.dataclass(frozen=True)
class WordAblationRecord:
    """One word's ``image`` and the ``drop`` of its probability once the preceding words were deleted."""

    image: int
    drop: float


@dataclasses.dataclass(frozen=True)
class WordAblationSummary(JsonRecord):
    """Mean probability drop (json: ``{"probability_drop"}``)."""

    probability_drop: Interval


class WordAblation(AblationMetric):
    """Word ablation (json: ``results["ablation"]["words"][method]``, a :class:`WordAblationSummary`)."""

    path = ("ablation", "words")

    def baseline(self, batch: Batch) -> List[WordAblationRecord]:
        return _records(batch, batch.explanation, None)

    def measure(self, batch: Batch, explained: Explained) -> List[WordAblationRecord]:
        if explained.explanation.word_relevance is None:
            return []
        return _records(batch, explained.explanation, explained.explanation.word_relevance)

    def summarise(self, records: List[WordAblationRecord]) -> WordAblationSummary:
        return WordAblationSummary(probability_drop=mean_over_images(*column(records, lambda r: r.drop)))

    def markdown(self, table: Optional[dict]) -> List[str]:
        rows = [f"| {method} | {entry['probability_drop']['words']} | {format_interval(entry['probability_drop'])} |"
                for method, entry in (table or {}).items()]
        return markdown_table("Word ablation (most relevant preceding words deleted)",
                              ("method", "words", "probability drop"), rows)


def _records(batch: Batch, explanation, word_relevance: Optional[torch.Tensor]) -> List[WordAblationRecord]:
    """Deletes the preceding words with the highest ``word_relevance [B, T, T]`` (None: random ones) of every
    word of ``explanation``'s captions that has enough of them."""
    settings = batch.settings
    k, rows, prefixes, words, before = settings.deleted_words, [], [], [], []
    captions = explanation.captions
    for row in range(captions.shape[0]):
        for t in range(settings.min_preceding, int(explanation.lengths[row]) - 1):  # not <end>
            if word_relevance is None:
                deleted = torch.randperm(t, generator=batch.generator)[:k] + 1
            else:
                deleted = ablation.word_deletions(word_relevance[row, t], t + 1, k)
            keep = torch.ones(t + 1, dtype=torch.bool)
            keep[deleted] = False
            rows.append(row)
            prefixes.append(captions[row, :t + 1][keep])
            words.append(int(captions[row, t + 1]))
            before.append(float(explanation.probabilities[row, t]))
    if not rows:
        return []
    after = ablation.teacher_forced_probability(batch.model.captioner, batch.features[rows], prefixes,
                                                torch.tensor(words))
    return [WordAblationRecord(image=batch.positions[row], drop=was - now)
            for row, was, now in zip(rows, before, after.tolist())]


EXPLANATION_METRICS.register("word_ablation", WordAblation(), help="delete the most relevant preceding words: how far "
                             "does the word's probability drop (against random deletions)")
