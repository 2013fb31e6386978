"""How good are the explanations of a captioner's words? Grounding and pointing game (:mod:`.grounding`), ablation
faithfulness (:mod:`.ablation`) and hallucinated-word detection, for every explanation method, batched over a split
and reduced to tables with 95 % bootstrap intervals over images.

Every method explains the same captions: the model's own (decoded once per batch with ``beam_size`` beams, as the
caption metrics and CHAIR see them). The words measured are the object mentions of those captions
(:class:`~capxai.evaluate.objects.ObjectWords`, the head noun of a phrase): grounding and image ablation take the
mentions of objects the image holds and has boxes for; detection takes every mention, labelled present or
hallucinated by CHAIR's ground truth; word ablation takes every word with enough preceding words.

Explaining, decoding and ablation run on the model's device; the measurements on the CPU. Under torchrun the batches
are shared out (batch b to process b mod W) and the rows merged in batch order, and the random baselines of batch b
are drawn from a generator seeded by ``seed`` and b, so that W processes give the result of one.
"""
import contextlib
import dataclasses
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
from sklearn.metrics import roc_curve
import torch
from tqdm import tqdm

from capxai.data.captions import CaptionDataset, image_id_of, stack_images
from capxai.evaluate import ablation, faithfulness
from capxai.evaluate.grounding import THRESHOLDS, box_masks, grounding_scores, pointing_game
from capxai.evaluate.hallucination import HallucinationData
from capxai.evaluate.statistics import multiplicity_ci, ratio_ci, roc_auc, weighted_roc_auc
from capxai.explain import METHODS, make_explainer
from capxai.explain.explainers import GRADIENT_FAMILY, explain_gradient_family
from capxai.models import beam_search
from capxai.runtime import RunSettings
from capxai.interrupts import stoppable

START = 1
DETECTION_STATISTICS = ("mean", "max", "positive_mass", "inside_share", "word_relevance")
MODEL_STATISTICS = ("probability", "sentinel_share")


@dataclasses.dataclass
class ExplanationSettings:
    """What :func:`evaluate_explanations` measures and how (defaults: the paper's)."""

    methods: Sequence[str] = dataclasses.field(default_factory=lambda: tuple(METHODS.names()))
    beam_size: int = 3
    max_length: int = 16
    batch_size: int = 50
    composite: str = "paper"
    pointing_tolerance: float = 0.0  # pixels of the model's input a box is grown by in the pointing game
    grid: int = 8
    patches: int = 20
    deleted_words: int = 3
    min_preceding: int = 6
    ablation: bool = True
    curve_steps: int = 8  # points of the insertion / deletion curves after 0 (faithfulness.curves)
    seed: int = 0
    limit: Optional[int] = None  # explain N images spread evenly over the split (None: all)
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


class _Records:
    """Rows of numbers, each tied to an image (the unit the intervals resample), and where the time went (seconds
    summed over the processes of a torchrun launch; ``synchronize``: waits for a GPU so that its work is counted in
    the phase that launched it)."""

    def __init__(self, synchronize=None):
        self.rows: Dict[str, List[list]] = {}
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

    def add(self, table: str, image: int, **values) -> None:
        self.rows.setdefault(table, []).append([image, values])

    def column(self, table: str, name: str):
        rows = [(image, values[name]) for image, values in self.rows.get(table, []) if name in values]
        return (np.asarray([r[0] for r in rows], dtype=np.int64), np.asarray([r[1] for r in rows], dtype=np.float64))

    def labels(self, table: str, name: str):
        return [values[name] for _, values in self.rows.get(table, [])]

    def extend(self, other: "_Records") -> None:
        for table, rows in other.rows.items():
            self.rows.setdefault(table, []).extend(rows)
        for phase, seconds in other.seconds.items():
            self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds


def _mean_over_images(images: np.ndarray, values: np.ndarray) -> dict:
    """Mean of word-level ``values``, resampled by image (a ratio of per-image sums); NaNs are left out."""
    keep = ~np.isnan(values)
    images, values = images[keep], values[keep]
    if values.size == 0:
        return {"value": None, "ci": [None, None], "images": 0, "words": 0}
    present, index = np.unique(images, return_inverse=True)
    sums = np.bincount(index, weights=values, minlength=present.size)
    counts = np.bincount(index, minlength=present.size).astype(np.float64)
    return {**ratio_ci(sums, counts), "words": int(values.size)}


def evaluate_explanations(model, dataset: CaptionDataset, data: HallucinationData,
                          settings: Optional[ExplanationSettings] = None, vocabulary=None,
                          progress: bool = True, run: Optional[RunSettings] = None) -> dict:
    """Explains the model's captions of ``dataset`` with every method of ``settings`` and measures them against
    ``data`` (boxes, CHAIR's ground truth). Returns ``{"settings", "images", "grounding", "ablation",
    "detection"}`` (see :func:`tables_markdown` for what each holds). ``run``: image-decoding workers and, under
    torchrun, the share of the batches this process explains (every process must call; process 0 gets the result,
    the others None). ``settings``: None for the defaults."""
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
        records = by_batch[number] = _Records(torch.cuda.synchronize if device.type == "cuda" else None)
        generator = torch.Generator().manual_seed(settings.seed + 1_000_003 * number)
        images = images.to(device, non_blocking=True)
        with torch.no_grad(), records.timed("decode"):
            features = model.encoder(images)
            decoded = beam_search(model.captioner, features, settings.beam_size, settings.max_length,
                                  guidance=settings.guidance)
        captions = torch.cat([torch.full((len(positions), 1), START, dtype=torch.long, device=device),
                              decoded.tokens], 1)
        _measure_batch(model, explainers=explainers, images=images, features=features, captions=captions,
                       image_ids=[ids[i] for i in positions], positions=positions, data=data, settings=settings,
                       records=records, generator=generator)
    records = _Records()
    for part in run.gather(by_batch):
        by_batch.update(part)
    if run.rank != 0:
        return None
    for number in range(len(batches)):
        records.extend(by_batch[number])
    with records.timed("tables and intervals"):
        tables = _tables(records, settings, count)
    return {**tables, "seconds": {phase: round(value, 2) for phase, value in records.seconds.items()}}



def spread_positions(total: int, limit: Optional[int]) -> List[int]:
    """``limit`` positions spread evenly over ``total`` images (all of them when ``limit`` is None or larger): a
    split's first images may all be of one kind (the scenes list the probe images last)."""
    if limit is None or limit >= total:
        return list(range(total))
    return np.linspace(0, total - 1, limit).round().astype(int).tolist()  # distinct: the step is >= 1


def _measure_batch(model, *, explainers, images, features, captions, image_ids, positions, data, settings, records,
                   generator) -> None:
    size = images.shape[-2:]
    mentions = None
    random_patches = None
    shared = {}
    if all(method in explainers for method in GRADIENT_FAMILY):  # their backward passes computed once for the three
        with records.timed("explain:gradcam+guided-backprop+guided-gradcam"):
            shared = explain_gradient_family(explainers, images, captions)
    for method, explainer in explainers.items():
        with records.timed(f"explain:{method}"):
            explanation = (shared[method] if method in shared else
                           explainer.explain(images, captions=captions)).to("cpu")  # measured on the CPU
        heatmaps = explanation.heatmaps().detach()
        if mentions is None:  # the same captions for every method: find the object words once
            mentions = _object_mentions(explanation, image_ids, positions, data, size, settings)
            random_patches = ablation.random_patches(len(mentions), settings.grid ** 2, settings.patches, generator)
            _model_statistics(explanation, mentions, records)
            _uniform_grounding(mentions, size, records)
            if settings.ablation:
                with records.timed("ablation"):
                    _image_ablation(model, images, explanation, mentions, random_patches, "random", settings,
                                    records)
                    _insertion_deletion(model, images, explanation, mentions, None, "random", settings, records,
                                        generator)
                    _word_ablation(model, features, explanation, None, positions, settings, records, generator)
        with records.timed("grounding and detection"):
            _grounding(method, heatmaps, mentions, records)
            _detection(method, heatmaps, explanation, mentions, records)
        if not settings.ablation:
            continue
        with records.timed("ablation"):
            maps = torch.stack([heatmaps[m["row"], m["t"]] for m in mentions]) if mentions else None
            chosen = (ablation.most_relevant_patches(ablation.patch_relevance(maps, settings.grid), settings.patches,
                                                     generator) if maps is not None else None)
            _image_ablation(model, images, explanation, mentions, chosen, method, settings, records)
            _insertion_deletion(model, images, explanation, mentions, maps, method, settings, records, generator)
            if explanation.word_relevance is not None:
                _word_ablation(model, features, explanation, method, positions, settings, records, generator)


def _object_mentions(explanation, image_ids, positions, data: HallucinationData, size, settings) -> List[dict]:
    mentions = []
    for row, (image_id, position) in enumerate(zip(image_ids, positions)):
        words = explanation.words[row]
        image_size = data.annotations.sizes[image_id]
        all_boxes = [box for boxes in data.annotations.boxes.get(image_id, {}).values() for box in boxes]
        union = (box_masks(all_boxes, image_size, tuple(size)).any(0) if all_boxes
                 else torch.zeros(tuple(size), dtype=torch.bool))
        for mention in data.objects.find(words):
            boxes = data.annotations.boxes.get(image_id, {}).get(mention.category, [])
            mentions.append({
                "row": row, "image": position, "t": mention.end - 1, "category": mention.category,
                "word": int(explanation.tokens[row, mention.end - 1]),
                "hallucinated": mention.category not in data.present[image_id],
                "boxes": box_masks(boxes, image_size, tuple(size)) if boxes else None,
                "pointing_boxes": (box_masks(boxes, image_size, tuple(size), settings.pointing_tolerance)
                                   if boxes else None),
                "union": union})
    return mentions


def _model_statistics(explanation, mentions, records) -> None:
    for m in mentions:
        values = {"probability": float(explanation.probabilities[m["row"], m["t"]]),
                  "hallucinated": float(m["hallucinated"])}
        if explanation.beta is not None:
            values["sentinel_share"] = 1.0 - float(explanation.beta[m["row"], m["t"]])
        records.add("detection:model", m["image"], **values)


def _uniform_grounding(mentions, size, records) -> None:
    grounded = [m for m in mentions if m["boxes"] is not None]
    if grounded:
        _grounding("uniform", torch.ones(len(grounded), *size), grounded, records, stacked=True)


def _grounding(method, heatmaps, mentions, records, stacked: bool = False) -> None:
    grounded = [m for m in mentions if m["boxes"] is not None]
    if not grounded:
        return
    maps = heatmaps if stacked else torch.stack([heatmaps[m["row"], m["t"]] for m in grounded])
    scores = grounding_scores(maps, [m["boxes"] for m in grounded])
    hits = pointing_game(maps, [m["pointing_boxes"] for m in grounded])
    for m, score, hit in zip(grounded, scores.tolist(), hits.tolist()):
        records.add(f"grounding:{method}", m["image"], category=m["category"], pointing=hit,
                    **{f"t{threshold}": value for threshold, value in zip(THRESHOLDS, score)})


def _detection(method, heatmaps, explanation, mentions, records) -> None:
    for m in mentions:
        heatmap = heatmaps[m["row"], m["t"]].double()
        positive = heatmap.clamp(min=0)
        mass = float(positive.sum())
        values = {"mean": float(heatmap.mean()), "max": float(heatmap.max()), "positive_mass": mass,
                  "inside_share": float(positive[m["union"]].sum()) / mass if mass > 0 else 0.0,
                  "hallucinated": float(m["hallucinated"])}
        if explanation.word_relevance is not None:
            values["word_relevance"] = float(explanation.word_relevance[m["row"], m["t"], :m["t"] + 1].sum())
        records.add(f"detection:{method}", m["image"], **values)


def _image_ablation(model, images, explanation, mentions, patches, method, settings, records) -> None:
    rows = [i for i, m in enumerate(mentions) if not m["hallucinated"]]
    if not rows or patches is None:
        return
    chosen = [mentions[i] for i in rows]
    blanked = ablation.blank_patches(images[[m["row"] for m in chosen]], patches[rows], settings.grid)
    words = torch.tensor([m["word"] for m in chosen], device=images.device)
    before = torch.stack([explanation.probabilities[m["row"], m["t"]] for m in chosen]).to(images.device)
    disappeared, drop = ablation.image_ablation(model.encoder, model.captioner, blanked, words, before,
                                                settings.beam_size, settings.max_length)
    for m, gone, fall in zip(chosen, disappeared.tolist(), drop.tolist()):
        records.add(f"image_ablation:{method}", m["image"], disappeared=float(gone), drop=fall)


def _insertion_deletion(model, images, explanation, mentions, maps, method, settings, records, generator) -> None:
    """Insertion / deletion areas of the words that are there (not hallucinated), patches in the order of the
    method's map (``maps [mentions, H, W]``; None: a random order, the baseline)."""
    rows = [i for i, m in enumerate(mentions) if not m["hallucinated"]]
    if not rows:
        return
    chosen = [mentions[i] for i in rows]
    patches = settings.grid ** 2
    if maps is None:
        order = ablation.random_patches(len(chosen), patches, patches, generator)
    else:
        order = ablation.most_relevant_patches(ablation.patch_relevance(maps[rows], settings.grid), patches, generator)
    prefixes = [explanation.captions[m["row"], :m["t"] + 1] for m in chosen]
    result = faithfulness.curves(model.encoder, model.captioner, images[[m["row"] for m in chosen]], prefixes,
                                 torch.tensor([m["word"] for m in chosen]), order, settings.grid, settings.curve_steps)
    for m, inserted, deleted in zip(chosen, result["insertion_auc"].tolist(), result["deletion_auc"].tolist()):
        records.add(f"insertion_deletion:{method}", m["image"], insertion_auc=inserted, deletion_auc=deleted)


def _word_ablation(model, features, explanation, method, positions, settings, records, generator) -> None:
    """``method`` None: the random baseline."""
    k, rows, prefixes, words, before = settings.deleted_words, [], [], [], []
    captions = explanation.captions
    for row in range(captions.shape[0]):
        for t in range(settings.min_preceding, int(explanation.lengths[row]) - 1):  # not <end>
            if method is None:
                deleted = torch.randperm(t, generator=generator)[:k] + 1
            else:
                deleted = ablation.word_deletions(explanation.word_relevance[row, t], t + 1, k)
            keep = torch.ones(t + 1, dtype=torch.bool)
            keep[deleted] = False
            rows.append(row)
            prefixes.append(captions[row, :t + 1][keep])
            words.append(int(captions[row, t + 1]))
            before.append(float(explanation.probabilities[row, t]))
    if not rows:
        return
    after = ablation.teacher_forced_probability(model.captioner, features[rows], prefixes, torch.tensor(words))
    for row, was, now in zip(rows, before, after.tolist()):
        records.add(f"word_ablation:{method or 'random'}", positions[row], drop=was - now)


def _tables(records: _Records, settings: ExplanationSettings, images: int) -> dict:
    methods = list(settings.methods)
    grounding = {}
    for method in ["uniform", *methods]:
        table = f"grounding:{method}"
        if table not in records.rows:
            continue
        entry = {"thresholds": {str(threshold): _mean_over_images(*records.column(table, f"t{threshold}"))
                                for threshold in THRESHOLDS},
                 "pointing_game": _mean_over_images(*records.column(table, "pointing"))}
        categories = np.asarray(records.labels(table, "category"))
        columns = {name: records.column(table, name)[1] for name in ("t0.0", "t0.5", "pointing")}
        per_category = {}
        for category in sorted(set(categories.tolist())):
            chosen = categories == category
            per_category[category] = {"words": int(chosen.sum()),
                                      **{name: float(columns[name][chosen].mean()) for name in ("t0.0", "t0.5")},
                                      "pointing_game": float(columns["pointing"][chosen].mean())}
        entry["per_category"] = per_category
        grounding[method] = entry
    ablations = {"image": {}, "words": {}}
    for method in ["random", *methods]:
        if f"image_ablation:{method}" in records.rows:
            ablations["image"][method] = {
                "disappeared": _mean_over_images(*records.column(f"image_ablation:{method}", "disappeared")),
                "probability_drop": _mean_over_images(*records.column(f"image_ablation:{method}", "drop"))}
        if f"insertion_deletion:{method}" in records.rows:
            ablations.setdefault("insertion_deletion", {})[method] = {
                name: _mean_over_images(*records.column(f"insertion_deletion:{method}", name))
                for name in ("insertion_auc", "deletion_auc")}
        if f"word_ablation:{method}" in records.rows:
            ablations["words"][method] = {
                "probability_drop": _mean_over_images(*records.column(f"word_ablation:{method}", "drop"))}
    detection = _detection_tables(records, methods)
    recorded = {field.name: getattr(settings, field.name) for field in dataclasses.fields(settings)
                if field.name != "guidance"}  # the guidance is recorded in the run stamp, as numbers
    return {"settings": recorded | {"methods": methods, "thresholds": list(THRESHOLDS)},
            "images": images, "grounding": grounding, "ablation": ablations, "detection": detection}


def _auc_entry(image_index: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> Optional[dict]:
    value = roc_auc(labels, scores)
    if value is None:
        return None
    present, index = np.unique(image_index, return_inverse=True)
    # the bootstrap over images, every resample in one pass: a word counts as often as its image is drawn
    entry = multiplicity_ci(present.size, lambda counts: weighted_roc_auc(labels, scores, counts[:, index]))
    entry["value"] = value
    # which side of the statistic marks a hallucination; the detection AUC is the better of the two readings
    entry["higher_means"] = "hallucinated" if value >= 0.5 else "present"
    entry["detection_auc"] = max(value, 1 - value)
    entry["words"] = int(labels.size)
    return entry


def roc_points(labels: np.ndarray, scores: np.ndarray, higher_means: str, points: int = 101) -> dict:
    """The ROC curve of detecting hallucinated words (label 1) by ``scores`` read the way ``higher_means`` says,
    thinned to at most ``points`` points for plotting (sklearn's ``roc_curve`` drops collinear points first)."""
    oriented = scores if higher_means == "hallucinated" else -scores
    fpr, tpr, _ = roc_curve(labels, oriented)
    if fpr.size > points:
        keep = np.unique(np.linspace(0, fpr.size - 1, points).round().astype(int))
        fpr, tpr = fpr[keep], tpr[keep]
    return {"fpr": [round(float(v), 4) for v in fpr], "tpr": [round(float(v), 4) for v in tpr]}


def _detection_tables(records: _Records, methods: Sequence[str]) -> dict:
    result = {"statistics": {}, "best": {}}
    for method, names in [("model", MODEL_STATISTICS)] + [(m, DETECTION_STATISTICS) for m in methods]:
        table = f"detection:{method}"
        if table not in records.rows:
            continue
        image_index, labels = records.column(table, "hallucinated")
        result.setdefault("words", int(labels.size))
        result.setdefault("hallucinated", int(labels.sum()))
        entries = {}
        for name in names:
            index, scores = records.column(table, name)
            if scores.size != labels.size:
                continue
            entry = _auc_entry(image_index, labels.astype(np.int64), scores)
            if entry is not None:
                entries[name] = entry
        result["statistics"][method] = entries
        if entries:
            best = max(entries, key=lambda name: entries[name]["detection_auc"])
            _, scores = records.column(table, best)
            result["best"][method] = {"statistic": best, **entries[best],
                                      "roc": roc_points(labels.astype(np.int64), scores, entries[best]["higher_means"])}
    return result


def _fmt(entry: Optional[dict], digits: int = 3) -> str:
    if not entry or entry.get("value") is None:
        return "–"
    low, high = entry["ci"]
    interval = f" [{low:.{digits}f}, {high:.{digits}f}]" if low is not None else ""
    return f"{entry['value']:.{digits}f}{interval}"


def tables_markdown(results: dict, title: str = "") -> str:
    """The tables of :func:`evaluate_explanations` as markdown (value [95 % interval])."""
    lines = [f"# {title}" if title else "# Explanation evaluation", "",
             f"{results['images']} images; 95 % bootstrap intervals over images.", "",
             "## Grounding (relevance in the best box) and pointing game", "",
             "| method | words | threshold 0 | threshold 0.5 | pointing game |", "|---|---|---|---|---|"]
    for method, entry in results["grounding"].items():
        lines.append(f"| {method} | {entry['pointing_game']['words']} | {_fmt(entry['thresholds']['0.0'])} | "
                     f"{_fmt(entry['thresholds']['0.5'])} | {_fmt(entry['pointing_game'])} |")
    lines += ["", "## Image ablation (k most relevant patches blanked)", "",
              "| method | words | disappeared | probability drop (word stays) |", "|---|---|---|---|"]
    for method, entry in results["ablation"]["image"].items():
        lines.append(f"| {method} | {entry['disappeared']['words']} | {_fmt(entry['disappeared'])} | "
                     f"{_fmt(entry['probability_drop'])} |")
    curves = results["ablation"].get("insertion_deletion", {})
    if curves:
        lines += ["", "## Insertion / deletion (area under the word's probability as the most relevant patches are "
                  "revealed / removed)", "", "| method | words | insertion AUC (higher: faithful) | deletion AUC "
                  "(lower: faithful) |", "|---|---|---|---|"]
        for method, entry in curves.items():
            lines.append(f"| {method} | {entry['insertion_auc']['words']} | {_fmt(entry['insertion_auc'])} | "
                         f"{_fmt(entry['deletion_auc'])} |")
    lines += ["", "## Word ablation (most relevant preceding words deleted)", "",
              "| method | words | probability drop |", "|---|---|---|"]
    for method, entry in results["ablation"]["words"].items():
        lines.append(f"| {method} | {entry['probability_drop']['words']} | {_fmt(entry['probability_drop'])} |")
    detection = results["detection"]
    lines += ["", f"## Hallucinated-word detection ({detection.get('hallucinated', 0)} hallucinated of "
              f"{detection.get('words', 0)} object words)", "",
              "| method | best statistic | higher means | detection AUC | ROC AUC [95 % interval] |",
              "|---|---|---|---|---|"]
    for method, best in detection["best"].items():
        lines.append(f"| {method} | {best['statistic']} | {best['higher_means']} | {best['detection_auc']:.3f} | "
                     f"{_fmt(best)} |")
    if results.get("seconds"):
        lines += ["", "Seconds: " + ", ".join(f"{phase} {value:.1f}" for phase, value in results["seconds"].items())]
    return "\n".join(lines) + "\n"
