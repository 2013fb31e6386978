"""What every explanation metric shares: the registry they enter, the words they measure (:class:`Mention`), what
they see of a batch (:class:`Batch`, :class:`Explained`), the store of their per-word records
(:class:`Measurements`), the interval record of their tables (:class:`Interval`) and the conversion of records to the
results json (:func:`to_json`)."""
import abc
import contextlib
import dataclasses
import functools
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from capxai.evaluate.grounding import box_masks
from capxai.evaluate.statistics import ratio_ci
from capxai.registry import Registry

# name -> ExplanationMetric. Registration order is the order of measuring (the random baselines of a batch come
# from one generator, so it fixes their draws) and of the tables in the json and the markdown.
EXPLANATION_METRICS: Registry = Registry("explanation_metrics")


def to_json(value: Any) -> Any:
    """``value`` as the results json holds it: records through their ``to_json``, tuples as lists."""
    if hasattr(value, "to_json"):
        return value.to_json()
    if isinstance(value, dict):
        return {key: to_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(item) for item in value]
    return value


class JsonRecord:
    """Mixin of the summary records: ``to_json()`` is the record as a dict of its fields, in their order."""

    def to_json(self) -> dict:
        return {field.name: to_json(getattr(self, field.name)) for field in dataclasses.fields(self)}


@dataclasses.dataclass(frozen=True)
class Interval(JsonRecord):
    """A mean over words with its 95 % bootstrap interval over images (json: ``{"value", "ci", "images",
    "words"}``); ``value`` None when nothing was measured."""

    value: Optional[float]
    ci: Tuple[Optional[float], Optional[float]]
    images: int
    words: int


def mean_over_images(images: np.ndarray, values: np.ndarray) -> Interval:
    """Mean of word-level ``values [N]`` (``images [N]``: each word's image), resampled by image (a ratio of
    per-image sums); NaNs are left out."""
    keep = ~np.isnan(values)
    images, values = images[keep], values[keep]
    if values.size == 0:
        return Interval(value=None, ci=(None, None), images=0, words=0)
    present, index = np.unique(images, return_inverse=True)
    sums = np.bincount(index, weights=values, minlength=present.size)
    counts = np.bincount(index, minlength=present.size).astype(np.float64)
    entry = ratio_ci(sums, counts)
    return Interval(value=entry["value"], ci=tuple(entry["ci"]), images=entry["images"], words=int(values.size))


def column(records: Sequence[Any], read: Callable[[Any], Optional[float]]) -> Tuple[np.ndarray, np.ndarray]:
    """``(images [N], values [N])`` of the records whose ``read(record)`` is not None."""
    pairs = [(record.image, value) for record in records for value in (read(record),) if value is not None]
    return (np.asarray([pair[0] for pair in pairs], dtype=np.int64),
            np.asarray([pair[1] for pair in pairs], dtype=np.float64))


def format_interval(entry: Optional[dict], digits: int = 3) -> str:
    """``value [low, high]`` of an interval's json, or a dash when there is no value."""
    if not entry or entry.get("value") is None:
        return "–"
    low, high = entry["ci"]
    interval = f" [{low:.{digits}f}, {high:.{digits}f}]" if low is not None else ""
    return f"{entry['value']:.{digits}f}{interval}"


def markdown_table(heading: str, columns: Sequence[str], rows: Sequence[str]) -> List[str]:
    """The lines of one markdown section: a blank line, the heading, the table."""
    return ["", f"## {heading}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns), *rows]


@dataclasses.dataclass(frozen=True, eq=False)
class Mention:
    """One object word of a caption: ``row`` of the batch, explained step ``t`` (the head noun's position),
    ``image``: the image's position in the split, ``word``: its token id, ``hallucinated``: the image holds no object
    of its category (CHAIR's ground truth). ``boxes`` / ``pointing_boxes`` ``[boxes, H, W]`` bool: the category's
    boxes on the model's input (the latter grown by the pointing tolerance), None when the image has none;
    ``union [H, W]``: every box of the image."""

    row: int
    image: int
    t: int
    category: str
    word: int
    hallucinated: bool
    boxes: Optional[torch.Tensor]
    pointing_boxes: Optional[torch.Tensor]
    union: torch.Tensor


def find_mentions(explanation, image_ids: Sequence, positions: Sequence[int], data, size: Tuple[int, int],
                  pointing_tolerance: float) -> List[Mention]:
    """The object mentions of the explained captions (``data``: a :class:`~capxai.evaluate.hallucination.
    HallucinationData` with the images' boxes and objects), their boxes drawn on an ``size = (H, W)`` input."""
    mentions = []
    for row, (image_id, position) in enumerate(zip(image_ids, positions)):
        image_size = data.annotations.sizes[image_id]
        boxes_of = data.annotations.boxes.get(image_id, {})
        all_boxes = [box for boxes in boxes_of.values() for box in boxes]
        union = (box_masks(all_boxes, image_size, size).any(0) if all_boxes
                 else torch.zeros(size, dtype=torch.bool))
        for mention in data.objects.find(explanation.words[row]):
            boxes = boxes_of.get(mention.category, [])
            mentions.append(Mention(
                row=row, image=position, t=mention.end - 1, category=mention.category,
                word=int(explanation.tokens[row, mention.end - 1]),
                hallucinated=mention.category not in data.present[image_id],
                boxes=box_masks(boxes, image_size, size) if boxes else None,
                pointing_boxes=box_masks(boxes, image_size, size, pointing_tolerance) if boxes else None,
                union=union))
    return mentions


@dataclasses.dataclass(frozen=True, eq=False)
class Batch:
    """What every metric sees of one batch: ``images [B, 3, H, W]`` and their ``features`` on the model's device,
    the first method's ``explanation`` (on the CPU: the captions, their lengths and word probabilities, the same for
    every method), the images' ``positions`` in the split, the object ``mentions`` of the captions, the
    ``settings`` (an :class:`~capxai.evaluate.explanations.ExplanationSettings`) and the ``generator`` of the
    batch's random baselines."""

    model: Any
    images: torch.Tensor
    features: Any
    explanation: Any
    positions: Sequence[int]
    mentions: List[Mention]
    settings: Any
    generator: torch.Generator


@dataclasses.dataclass(frozen=True, eq=False)
class Explained:
    """One method's ``explanation`` of a batch (on the CPU) and its ``heatmaps [B, T, H, W]``."""

    method: str
    explanation: Any
    heatmaps: torch.Tensor
    mentions: List[Mention]

    @functools.cached_property
    def mention_maps(self) -> Optional[torch.Tensor]:
        """``[mentions, H, W]``: the heatmap of every mention's word; None when the captions name no object."""
        return torch.stack([self.heatmaps[m.row, m.t] for m in self.mentions]) if self.mentions else None


class ExplanationMetric(abc.ABC):
    """One measurement of explanations. A metric measures its ``baseline`` once a batch (the uniform map, random
    patches, the model's own statistics: what an explanation must beat) and every method's explanation, each as a
    list of per-word records (frozen dataclasses with the word's ``image``), and reduces them to its table.

    Attributes:
        path: where its table sits in the results json (``("ablation", "image")``: ``results["ablation"]["image"]``).
        phase: the entry of the results' ``seconds`` its time is counted in.
        baseline_name: the name its baseline's rows take beside the methods.
        ablation: whether it runs the model again (skipped when the settings say no ablation).
        written_empty: whether its table is written when nothing was measured.
    """

    path: Tuple[str, ...] = ()
    phase: str = ""
    baseline_name: str = ""
    ablation: bool = False
    written_empty: bool = True

    def enabled(self, settings) -> bool:
        """Whether it runs under ``settings`` (an :class:`~capxai.evaluate.explanations.ExplanationSettings`)."""
        return settings.ablation or not self.ablation

    @abc.abstractmethod
    def baseline(self, batch: Batch) -> list:
        """The baseline's records of ``batch``."""

    @abc.abstractmethod
    def measure(self, batch: Batch, explained: Explained) -> list:
        """The records of one method's explanation of ``batch``."""

    @abc.abstractmethod
    def table(self, records: Dict[str, list]) -> dict:
        """The json of the table of ``records`` (``{baseline or method: records}``, baseline first)."""

    @abc.abstractmethod
    def markdown(self, table: Optional[dict]) -> List[str]:
        """The lines of its markdown section, from its ``table`` json (None: not written)."""


class PerMethodMetric(ExplanationMetric):
    """A metric whose table is one summary record per method (and baseline): ``{name: summary json}``."""

    @abc.abstractmethod
    def summarise(self, records: list):
        """The summary record of one method's (or the baseline's) per-word ``records``."""

    def table(self, records: Dict[str, list]) -> dict:
        return {method: self.summarise(rows).to_json() for method, rows in records.items()}


class AblationMetric(PerMethodMetric):
    """A per-method metric that runs the model again without what an explanation calls most relevant (or with only
    that), against a random choice; skipped when the settings say no ablation."""

    phase = "ablation"
    baseline_name = "random"
    ablation = True


class Measurements:
    """The per-word records of every metric and method over some batches, and where the time went (seconds summed
    over the processes of a torchrun launch; ``synchronize``: waits for a GPU so that its work is counted in the
    phase that launched it)."""

    def __init__(self, synchronize: Optional[Callable[[], None]] = None):
        self.records: Dict[Tuple[str, str], list] = {}
        self.seconds: Dict[str, float] = {}
        self.synchronize = synchronize

    @contextlib.contextmanager
    def timed(self, phase: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            if self.synchronize is not None:
                self.synchronize()
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - started

    def add(self, metric: str, method: str, records: list) -> None:
        """Adds ``records``; a metric and method without any record have no entry (their table row is left out)."""
        if records:
            self.records.setdefault((metric, method), []).extend(records)

    def of(self, metric: str, names: Sequence[str]) -> Dict[str, list]:
        """``{name: records}`` of ``metric`` for those of ``names`` (methods and the baseline) that have any."""
        return {name: self.records[(metric, name)] for name in names if (metric, name) in self.records}

    def extend(self, other: "Measurements") -> None:
        """Adds the records and seconds of ``other`` (the next batch's) after these."""
        for key, records in other.records.items():
            self.records.setdefault(key, []).extend(records)
        for phase, seconds in other.seconds.items():
            self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds
