"""The fine-tuning results table (the paper's experiment): one row per model variant (cross-entropy, baseline and
LRP fine-tuned, per objective, per captioner), each the mean over its seeds' evaluations, with a 95 % interval over
seeds (Student t) and, per seed, the evaluation's own bootstrap interval over images; and rows "method - baseline"
paired by seed and, within a seed, by image, which is what a claim "method X hallucinates less" is about.

Read from what ``capxai evaluate --explanations lrp`` wrote (``load_evaluation``); nothing is recomputed here except
the image intervals of CIDEr and ROUGE-L (means of per-image scores, bootstrapped like the others) and the paired
intervals of the differences (from the per-image records of the evaluations).
"""
import math
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from scipy import stats

from capxai.evaluate.hierarchical import hierarchical_ci, paired_ratio_difference
from capxai.evaluate.statistics import mean_ci, paired_ratio_difference_ci

# (column, where it is in an evaluation, higher is better)
COLUMNS: Tuple[Tuple[str, Tuple[str, ...], bool], ...] = (
    ("BLEU-4", ("metrics", "overall", "Bleu_4"), True),
    ("METEOR", ("metrics", "overall", "METEOR"), True),
    ("ROUGE-L", ("metrics", "overall", "ROUGE_L"), True),
    ("CIDEr", ("metrics", "overall", "CIDEr"), True),
    ("CHAIR-s", ("hallucination", "chair", "overall", "CHAIRs"), False),
    ("CHAIR-i", ("hallucination", "chair", "overall", "CHAIRi"), False),
    ("CHAIR-s probes", ("hallucination", "chair_probes", "overall", "CHAIRs"), False),
    ("CHAIR-i probes", ("hallucination", "chair_probes", "overall", "CHAIRi"), False),
    ("probe rate", ("hallucination", "probes", "rate"), False),
    ("freq. precision", ("hallucination", "frequent_words", "overall", "precision"), True),
    ("freq. recall", ("hallucination", "frequent_words", "overall", "recall"), True),
    ("freq. F1", ("hallucination", "frequent_words", "overall", "f1"), True),
    ("LRP grounding t=0", ("explanations", "grounding", "lrp", "thresholds", "0.0"), True),
)
# where an evaluation keeps a column's bootstrap interval over images, when it is not beside the value
_IMAGE_CI = {"CHAIR-s": ("hallucination", "chair", "overall", "CHAIRs_ci"),
             "CHAIR-i": ("hallucination", "chair", "overall", "CHAIRi_ci"),
             "CHAIR-s probes": ("hallucination", "chair_probes", "overall", "CHAIRs_ci"),
             "CHAIR-i probes": ("hallucination", "chair_probes", "overall", "CHAIRi_ci"),
             "probe rate": ("hallucination", "probes", "rate_ci")}
_PER_IMAGE = {"CIDEr": "CIDEr", "ROUGE-L": "ROUGE_L"}  # means of per-image scores: bootstrapped here
# columns whose difference to baseline fine-tuning gets a per-image paired bootstrap interval
PAIRED = ("CIDEr", "ROUGE-L", "CHAIR-i", "CHAIR-s", "CHAIR-i probes", "CHAIR-s probes", "probe rate")


def per_image_counts(evaluation: dict, column: str, source: str) -> Dict[str, Tuple[float, float]]:
    """``{image id: (numerator, denominator)}`` of a paired column: the image's score and 1 (CIDEr, ROUGE-L), its
    hallucinated and all object mentions (CHAIR-i), whether it hallucinated and 1 (CHAIR-s, probe rate)."""
    if column in _PER_IMAGE:
        scores = _get(evaluation, ("metrics", "imgToEval"), source)
        return {image: (float(entry[_PER_IMAGE[column]]), 1.0) for image, entry in scores.items()}
    if column == "probe rate":
        flags = _get(evaluation, ("hallucination", "probes", "per_image"), source)
        return {image: (float(flag), 1.0) for image, flag in flags.items()}
    part = "chair_probes" if column.endswith("probes") else "chair"
    images = _get(evaluation, ("hallucination", part, "imgToEval"), source)
    if column.startswith("CHAIR-i"):
        return {image: (float(len(entry["mscoco_hallucinated_words"])),
                        float(len(entry["mscoco_generated_words"]))) for image, entry in images.items()}
    return {image: (float(bool(entry["mscoco_hallucinated_words"])), 1.0) for image, entry in images.items()}


def paired_image_ci(evaluation: dict, baseline: dict, column: str, source: str) -> Optional[List[float]]:
    """The 95 % per-image paired bootstrap interval of ``column(evaluation) - column(baseline)`` (the same images
    resampled for both); None for an evaluation written before per-image probe flags were kept."""
    try:
        mine, theirs = (per_image_counts(e, column, source) for e in (evaluation, baseline))
    except ValueError:
        return None
    images = sorted(set(mine) & set(theirs))
    if set(mine) != set(theirs):
        raise ValueError(f"finetune_table: {source} and its baseline scored other images for {column}")
    columns = [[counts[image][k] for image in images] for counts in (mine, theirs) for k in (0, 1)]
    return _interval(paired_ratio_difference_ci(*columns)["ci"])


def hierarchical_difference_ci(pairs, starts: Sequence[int], column: str) -> Optional[List[float]]:
    """The 95 % interval of ``column``'s difference (method minus baseline) over starts, seeds and images
    (:func:`capxai.evaluate.hierarchical.hierarchical_ci`): ``pairs`` of ``((source, method evaluation), (source,
    baseline evaluation))``, one per model, ``starts`` the start index of each. None for one model, for starts with
    unequal numbers of seeds, or for evaluations without the per-image records."""
    groups = {}
    for start, pair in zip(starts, pairs):
        groups.setdefault(start, []).append(pair)
    seeds = {len(members) for members in groups.values()}
    if len(pairs) < 2 or len(seeds) != 1:
        return None
    try:
        counts = [[[per_image_counts(evaluation, column, source) for source, evaluation in pair] for pair in members]
                  for members in groups.values()]
    except ValueError:
        return None
    images = sorted(counts[0][0][0])
    values = np.array([[[[*mine[image], *theirs[image]] for image in images] for mine, theirs in members]
                       for members in counts])  # [starts, seeds, images, 4]
    return _interval(hierarchical_ci(values, paired_ratio_difference)["ci"])


def _get(tree, path: Sequence[str], source: str):
    node = tree
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            raise ValueError(f"{source}: the evaluation has no {'/'.join(path)} (evaluate with --explanations lrp "
                             "on a split with probes and instances)")
        node = node[key]
    return node


def _number(value) -> float:
    """A value, NaN where the evaluation left it undefined (e.g. precision of no predictions)."""
    return float("nan") if value is None else float(value)


def _interval(values) -> Optional[List[float]]:
    return None if not values or any(v is None for v in values) else [float(v) for v in values]


def _value_and_image_ci(evaluation: dict, column: str, path, source: str):
    if path[0] == "explanations":
        if "explanations" not in evaluation:  # evaluated without --explanations: the column is n/a
            return float("nan"), None
        _get(evaluation, path[:2], source)  # evaluated with explanations; LRP may have no grounded word (n/a)
        try:
            value = _get(evaluation, path, source)
        except ValueError:
            return float("nan"), None
    else:
        value = _get(evaluation, path, source)
    if isinstance(value, Mapping):  # {"value", "ci"} (grounding, frequent words)
        return _number(value["value"]), _interval(value.get("ci"))
    if column in _IMAGE_CI:
        return _number(value), _interval(_get(evaluation, _IMAGE_CI[column], source))
    if column in _PER_IMAGE:
        scores = [float(scores[_PER_IMAGE[column]]) for scores in
                  _get(evaluation, ("metrics", "imgToEval"), source).values()]
        return _number(value), _interval(mean_ci(scores)["ci"])
    return _number(value), None


def seed_interval(values: Sequence[float]) -> Optional[List[float]]:
    """95 % Student-t interval of the mean over seeds (None for one seed)."""
    if len(values) < 2:
        return None
    mean, spread = float(np.mean(values)), float(np.std(values, ddof=1)) / math.sqrt(len(values))
    half = float(stats.t.ppf(0.975, len(values) - 1)) * spread
    return [mean - half, mean + half]


def _cell(values: List[float], image_cis: List[Optional[List[float]]]) -> dict:
    mean = float(np.mean(values))
    if math.isnan(mean):  # undefined for some seed (e.g. precision without predictions): json null, "n/a"
        return {"mean": None, "seeds": [None if math.isnan(v) else v for v in values], "seed_ci": None,
                "image_ci": image_cis}
    return {"mean": mean, "seeds": values, "seed_ci": seed_interval(values), "image_ci": image_cis}


def finetune_table(rows: Sequence[Tuple[str, str, Sequence[Tuple[str, dict]]]],
                   starts: Optional[Mapping[str, Sequence[int]]] = None) -> dict:
    """``rows``: ``(captioner, variant, [(source, evaluation), ...])`` with one evaluation per seed, seeds in the
    same order in every row of a captioner (they pair each method with baseline). ``starts``: per captioner, the
    start model of each of its evaluations (e.g. ``[0, 0, 0, 1, 1, 1]``: two starts, three seeds each; default:
    one start). Every variant ``METHOD-X`` of a captioner with a ``baseline-X`` row gets a difference row
    ``METHOD-X - baseline-X``: per seed, then mean and t interval over seeds, and for the caption and hallucination
    columns (``PAIRED``) each seed's per-image paired bootstrap interval (``image_ci``) and one interval over starts,
    seeds and images (``hierarchical_ci``, :mod:`capxai.evaluate.hierarchical`). Returns ``{"columns", "rows":
    [{"captioner", "variant", "seeds", "images", "cells": {column: {"mean", "seeds", "seed_ci", "image_ci"}}}],
    "differences": [...]}``."""
    table = {"columns": [name for name, _, _ in COLUMNS], "rows": [], "differences": []}
    by_key, image_sets = {}, {}
    for captioner, variant, evaluations in rows:
        if not evaluations:
            raise ValueError(f"finetune_table: row {captioner}/{variant} has no evaluation")
        if (captioner, variant) in by_key:
            raise ValueError(f"finetune_table: row {captioner}/{variant} is given twice")
        for source, evaluation in evaluations:
            images = frozenset(_get(evaluation, ("metrics", "imgToEval"), source))
            first = image_sets.setdefault("images", (source, images))
            if images != first[1]:
                raise ValueError(f"finetune_table: {source} evaluated other images than {first[0]}; every row must "
                                 "be evaluated on the same split and images")
        cells = {}
        for column, path, _ in COLUMNS:
            pairs = [_value_and_image_ci(evaluation, column, path, source) for source, evaluation in evaluations]
            cells[column] = _cell([value for value, _ in pairs], [ci for _, ci in pairs])
        images = [evaluation["metrics"].get("run", {}).get("images") for _, evaluation in evaluations]
        probes = [_get(evaluation, ("hallucination", "probes", "images"), source) for source, evaluation in evaluations]
        row = {"captioner": captioner, "variant": variant, "seeds": len(evaluations), "images": images,
               "probe_images": probes, "sources": [source for source, _ in evaluations], "cells": cells}
        table["rows"].append(row)
        by_key[(captioner, variant)] = row
    evaluations_of = {(captioner, variant): evaluations for captioner, variant, evaluations in rows}
    for (captioner, variant), row in by_key.items():
        method, _, objective = variant.rpartition("-")
        if not method or method == "baseline":
            continue
        baseline_variant = f"baseline-{objective}"
        baseline = by_key.get((captioner, baseline_variant))
        if baseline is None:
            continue
        if baseline["seeds"] != row["seeds"]:
            raise ValueError(f"finetune_table: {captioner}/{variant} has {row['seeds']} seeds, its baseline "
                             f"{baseline['seeds']}; they pair seed by seed")
        pairs = list(zip(evaluations_of[(captioner, variant)], evaluations_of[(captioner, baseline_variant)]))
        model_starts = list((starts or {}).get(captioner) or [0] * len(pairs))
        if len(model_starts) != len(pairs):
            raise ValueError(f"finetune_table: {captioner} has {len(pairs)} evaluations per row and "
                             f"{len(model_starts)} start indices")
        cells = {}
        for column, _, higher_better in COLUMNS:
            differences = [_number(a) - _number(b) for a, b in zip(row["cells"][column]["seeds"],
                                                                   baseline["cells"][column]["seeds"])]
            image_cis = ([paired_image_ci(mine, theirs, column, source) for (source, mine), (_, theirs) in pairs]
                         if column in PAIRED else [])
            cells[column] = {**_cell(differences, image_cis), "higher_is_better": higher_better,
                             "hierarchical_ci": (hierarchical_difference_ci(pairs, model_starts, column)
                                                 if column in PAIRED else None)}
        table["differences"].append({"captioner": captioner, "variant": f"{variant} - {baseline_variant}",
                                     "seeds": row["seeds"], "starts": len(set(model_starts)), "cells": cells})
    return table


def _format(cell: dict) -> str:
    if cell["mean"] is None:
        return "n/a"
    text = f"{cell['mean']:.3f}"
    if cell.get("seed_ci"):
        text += f" [{cell['seed_ci'][0]:.3f}, {cell['seed_ci'][1]:.3f}]"
    image_cis = [ci for ci in cell.get("image_ci") or [] if ci]
    if image_cis:
        half = float(np.mean([(high - low) / 2 for low, high in image_cis]))
        text += f" ±{half:.3f}"
    return text


def _format_difference(cell: dict) -> str:
    """A difference cell: ``mean [interval over seeds]`` and each seed's paired image interval ``img [low, high]``
    (an interval that excludes 0 is a difference the images support)."""
    text = _format({**cell, "image_ci": []})
    image_cis = [ci for ci in cell.get("image_ci") or [] if ci]
    if image_cis:
        text += " img " + "; ".join(f"[{low:+.3f}, {high:+.3f}]" for low, high in image_cis)
    if cell.get("hierarchical_ci"):
        low, high = cell["hierarchical_ci"]
        text += f" all [{low:+.3f}, {high:+.3f}]"
    return text


def table_markdown(table: dict) -> str:
    """The table as markdown: ``mean [95 % interval over seeds] ±half-width of the image bootstrap interval (mean
    over seeds)``; difference rows ``mean [interval over seeds]`` (LRP minus baseline, paired by seed)."""
    columns = table["columns"]
    lines = ["| captioner | variant | seeds | " + " | ".join(columns) + " |",
             "|---|---|---|" + "---|" * len(columns)]
    for row in table["rows"]:
        lines.append(f"| {row['captioner']} | {row['variant']} | {row['seeds']} | "
                     + " | ".join(_format(row["cells"][column]) for column in columns) + " |")
    for row in table["differences"]:
        lines.append(f"| {row['captioner']} | {row['variant']} | {row['seeds']} | "
                     + " | ".join(_format_difference(row["cells"][column]) for column in columns) + " |")
    images = sorted({n for row in table["rows"] for n in row.get("images") or [] if n})
    probes = sorted({n for row in table["rows"] for n in row.get("probe_images") or [] if n})
    lines += ["", f"Values: mean over seeds [95 % Student-t interval over seeds] ±half-width of the 95 % bootstrap "
              f"interval over images (mean over seeds; BLEU-4 and METEOR are corpus scores without one). Test images: "
              f"{', '.join(map(str, images)) or 'unknown'}; probe images: {', '.join(map(str, probes)) or 'unknown'}. "
              "Difference rows: a method minus baseline fine-tuning, paired by seed [95 % interval over seeds], and "
              "per seed the 95 % paired bootstrap interval over images (img; for CHAIR and the probe rate negative "
              "is fewer hallucinations), and with two models or more one interval over starts, seeds and images "
              "(all; capxai.evaluate.hierarchical: with two starts it covers less than it claims)."]
    return "\n".join(lines) + "\n"
