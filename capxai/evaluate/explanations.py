"""How good are the explanations of a captioner's words? Every metric of :mod:`capxai.evaluate.explanation_metrics`
(grounding and pointing game, image and word ablation, insertion / deletion curves, hallucinated-word detection; one
module each, registered in ``EXPLANATION_METRICS``) for every explanation method, batched over a split and reduced to
tables with 95 % bootstrap intervals over images. This module explains the batches and hands them to the metrics.

Every method explains the same captions: the model's own (decoded once per batch with ``beam_size`` beams, as the
caption metrics and CHAIR see them). The words measured are the object mentions of those captions
(:class:`~capxai.evaluate.objects.ObjectWords`, the head noun of a phrase): grounding and image ablation take the
mentions of objects the image holds and has boxes for; detection takes every mention, labelled present or
hallucinated by CHAIR's ground truth; word ablation takes every word with enough preceding words.

Explaining, decoding and ablation run on the model's device; the measurements on the CPU. Under torchrun the batches
are shared out (batch b to process b mod W) and the rows merged in batch order, and the random baselines of batch b
are drawn from a generator seeded by ``seed`` and b, so that W processes give the result of one.
"""
import dataclasses
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

from capxai.data.captions import CaptionDataset, image_id_of, stack_images
from capxai.evaluate.explanation_metrics import (EXPLANATION_METRICS, Batch, Explained, ExplanationMetric,
                                                 Measurements, find_mentions, roc_points)
from capxai.evaluate.grounding import THRESHOLDS
from capxai.evaluate.hallucination import HallucinationData
from capxai.explain import METHODS, make_explainer
from capxai.explain.explainers import GRADIENT_FAMILY, explain_gradient_family
from capxai.models import beam_search
from capxai.runtime import RunSettings
from capxai.interrupts import stoppable
from capxai.options import POSITIVE, float_between, option

__all__ = ["ExplanationSettings", "evaluate_explanations", "spread_positions", "tables_markdown", "roc_points"]

START = 1


@dataclasses.dataclass
class ExplanationSettings:
    """What :func:`evaluate_explanations` measures and how (defaults: the paper's)."""

    methods: Sequence[str] = dataclasses.field(default_factory=lambda: tuple(METHODS.names()))
    beam_size: int = 3
    max_length: int = 16
    batch_size: int = option(50, flag="--explain-batch-size", type=POSITIVE, help="images explained at once")
    composite: str = "paper"
    pointing_tolerance: float = option(0.0, type=float_between(0, 1000), help="pixels of the model's input a box "
                                       "is grown by in the pointing game")
    grid: int = option(8, flag="--ablation-grid", type=POSITIVE, help="patches per image side for image ablation")
    patches: int = option(20, flag="--ablation-patches", type=POSITIVE, help="patches blanked per word")
    deleted_words: int = 3
    min_preceding: int = 6
    ablation: bool = option(True, flag="--no-ablation", help="skip the ablation experiments")
    curve_steps: int = 8  # points of the insertion / deletion curves after 0 (faithfulness.curves)
    seed: int = 0
    limit: Optional[int] = option(None, flag="--explain-limit", type=POSITIVE, help="measure explanations on N "
                                  "images spread evenly over the split (captions, metrics and CHAIR still use every "
                                  "image)")
    guidance: Optional[Callable] = None  # the captions' beam-search score adjustment (guided decoding), if any

    def __post_init__(self):
        unknown = [method for method in self.methods if method not in METHODS]
        if unknown or not self.methods:
            raise ValueError(f"explanation methods must be some of {METHODS.names()}, got {list(self.methods)}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"ExplanationSettings: limit must be >= 1 or None, got {self.limit}")
        for name in ("beam_size", "max_length", "batch_size", "grid", "patches", "deleted_words", "curve_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"ExplanationSettings: {name} must be >= 1, got {getattr(self, name)}")
        if self.patches > self.grid * self.grid:
            raise ValueError(f"ExplanationSettings: patches ({self.patches}) must be at most grid x grid "
                             f"({self.grid * self.grid})")
        if self.min_preceding < self.deleted_words:
            raise ValueError(f"ExplanationSettings: min_preceding ({self.min_preceding}) must be >= deleted_words "
                             f"({self.deleted_words})")
        if self.pointing_tolerance < 0:
            raise ValueError(f"ExplanationSettings: pointing_tolerance must be >= 0, got {self.pointing_tolerance}")


def evaluate_explanations(model, dataset: CaptionDataset, data: HallucinationData,
                          settings: Optional[ExplanationSettings] = None, vocabulary=None,
                          progress: bool = True, run: Optional[RunSettings] = None) -> dict:
    """Explains the model's captions of ``dataset`` with every method of ``settings`` and measures them against
    ``data`` (boxes, CHAIR's ground truth) with every metric of ``EXPLANATION_METRICS``. Returns ``{"settings",
    "images", "grounding", "ablation", "detection", "seconds"}`` (see :func:`tables_markdown` for what each holds).
    ``run``: image-decoding workers and, under torchrun, the share of the batches this process explains (every
    process must call; process 0 gets the result, the others None). ``settings``: None for the defaults."""
    settings = settings if settings is not None else ExplanationSettings()
    run = run if run is not None else RunSettings()

    vocabulary = vocabulary if vocabulary is not None else getattr(model, "vocabulary", None) or dataset.vocabulary
    ids = [image_id_of(entry, position) for position, entry in enumerate(dataset.entries)]
    data.annotations.check_covers(ids, "the instances file")
    explainers = {method: make_explainer(method, model, vocabulary, settings.composite)
                  for method in settings.methods}
    model.eval()
    device = next(model.parameters()).device
    chosen = spread_positions(len(dataset), settings.limit)
    count = len(chosen)
    batches = [chosen[start:start + settings.batch_size] for start in range(0, count, settings.batch_size)]
    mine = list(range(run.rank, len(batches), run.world_size))
    loader = run.loader(torch.utils.data.Subset(dataset, [i for b in mine for i in batches[b]]), settings.batch_size,
                        stack_images)
    by_batch = {}
    for number, images in zip(mine, stoppable(tqdm(loader, desc="evaluating explanations", unit="batch",
                                         disable=not progress))):
        positions = batches[number]
        measurements = by_batch[number] = Measurements(torch.cuda.synchronize if device.type == "cuda" else None)
        generator = torch.Generator().manual_seed(settings.seed + 1_000_003 * number)
        images = images.to(device, non_blocking=True)
        with torch.no_grad(), measurements.timed("decode"):
            features = model.encoder(images)
            decoded = beam_search(model.captioner, features, settings.beam_size, settings.max_length,
                                  guidance=settings.guidance)
        captions = torch.cat([torch.full((len(positions), 1), START, dtype=torch.long, device=device),
                              decoded.tokens], 1)
        _measure_batch(model, explainers=explainers, images=images, features=features, captions=captions,
                       image_ids=[ids[i] for i in positions], positions=positions, data=data, settings=settings,
                       measurements=measurements, generator=generator)
    measurements = Measurements()
    for part in run.gather(by_batch):
        by_batch.update(part)
    if run.rank != 0:
        return None
    for number in range(len(batches)):
        measurements.extend(by_batch[number])
    with measurements.timed("tables and intervals"):
        tables = _tables(measurements, settings, count)
    return {**tables, "seconds": {phase: round(value, 2) for phase, value in measurements.seconds.items()}}


def spread_positions(total: int, limit: Optional[int]) -> List[int]:
    """``limit`` positions spread evenly over ``total`` images (all of them when ``limit`` is None or larger): a
    split's first images may all be of one kind (the scenes list the probe images last)."""
    if limit is None or limit >= total:
        return list(range(total))
    return np.linspace(0, total - 1, limit).round().astype(int).tolist()  # distinct: the step is >= 1


def _measure_batch(model, *, explainers, images, features, captions, image_ids, positions, data, settings,
                   measurements: Measurements, generator) -> None:
    """Explains ``captions [B, L]`` of ``images [B, 3, H, W]`` with every method and adds to ``measurements`` what
    every metric the settings ask for measures of each explanation, and once of its baseline."""
    metrics = [(name, metric) for name, metric in EXPLANATION_METRICS.items() if metric.enabled(settings)]
    batch = None
    shared = {}
    if all(method in explainers for method in GRADIENT_FAMILY):  # their backward passes computed once for the three
        with measurements.timed("explain:gradcam+guided-backprop+guided-gradcam"):
            shared = explain_gradient_family(explainers, images, captions)
    for method, explainer in explainers.items():
        with measurements.timed(f"explain:{method}"):
            explanation = (shared[method] if method in shared else
                           explainer.explain(images, captions=captions)).to("cpu")  # measured on the CPU
        if batch is None:  # the same captions for every method: find the object words, measure the baselines once
            mentions = find_mentions(explanation, image_ids, positions, data, tuple(images.shape[-2:]),
                                     settings.pointing_tolerance)
            batch = Batch(model=model, images=images, features=features, explanation=explanation,
                          positions=positions, mentions=mentions, settings=settings, generator=generator)
            for name, metric in metrics:  # in the registry's order: it fixes the draws of the random baselines
                with measurements.timed(metric.phase):
                    measurements.add(name, metric.baseline_name, metric.baseline(batch))
        explained = Explained(method=method, explanation=explanation, heatmaps=explanation.heatmaps().detach(),
                              mentions=batch.mentions)
        for name, metric in metrics:
            with measurements.timed(metric.phase):
                measurements.add(name, method, metric.measure(batch, explained))


def _tables(measurements: Measurements, settings: ExplanationSettings, images: int) -> dict:
    """The results json: the settings, the number of images and every metric's table at its path."""
    methods = list(settings.methods)
    recorded = {field.name: getattr(settings, field.name) for field in dataclasses.fields(settings)
                if field.name != "guidance"}  # the guidance is recorded in the run stamp, as numbers
    results = {"settings": recorded | {"methods": methods, "thresholds": list(THRESHOLDS)}, "images": images}
    for name, metric in EXPLANATION_METRICS.items():
        table = metric.table(measurements.of(name, [metric.baseline_name, *methods]))
        if table or metric.written_empty:
            *parents, last = metric.path
            node = results
            for key in parents:
                node = node.setdefault(key, {})
            node[last] = table
    return results


def _table_of(results: dict, metric: ExplanationMetric) -> Optional[dict]:
    """The table of ``metric`` in ``results`` (None: not written)."""
    node = results
    for key in metric.path:
        node = node.get(key) if isinstance(node, dict) else None
    return node


def tables_markdown(results: dict, title: str = "") -> str:
    """The tables of :func:`evaluate_explanations` as markdown (value [95 % interval]), one section per metric."""
    lines = [f"# {title}" if title else "# Explanation evaluation", "",
             f"{results['images']} images; 95 % bootstrap intervals over images."]
    for metric in EXPLANATION_METRICS.values():
        lines += metric.markdown(_table_of(results, metric))
    if results.get("seconds"):
        lines += ["", "Seconds: " + ", ".join(f"{phase} {value:.1f}" for phase, value in results["seconds"].items())]
    return "\n".join(lines) + "\n"
