"""The fine-tuning results table (the paper's experiment): one row per model variant (cross-entropy, baseline and
LRP fine-tuned, per objective, per captioner), each the mean over its seeds' evaluations, with a 95 % interval over
seeds (Student t) and, per seed, the evaluation's own bootstrap interval over images; and rows "LRP - baseline"
paired by seed, which is what the claim "LRP fine-tuning hallucinates less" is about.

Read from what ``capxai evaluate --explanations lrp`` wrote (``load_evaluation``); nothing is recomputed here except
the image intervals of CIDEr and ROUGE-L (means of per-image scores, bootstrapped like the others).
"""
import math
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from scipy import stats

from capxai.evaluate.statistics import mean_ci

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


def finetune_table(rows: Sequence[Tuple[str, str, Sequence[Tuple[str, dict]]]]) -> dict:
    """``rows``: ``(captioner, variant, [(source, evaluation), ...])`` with one evaluation per seed, seeds in the
    same order in every row of a captioner (they pair LRP with baseline). Variants named ``lrp-X`` and
    ``baseline-X`` of one captioner get a difference row ``lrp-X - baseline-X`` (per seed, then mean and t
    interval). Returns ``{"columns", "rows": [{"captioner", "variant", "seeds", "images", "cells": {column:
    {"mean", "seeds", "seed_ci", "image_ci"}}}], "differences": [...]}``."""
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
    for (captioner, variant), row in by_key.items():
        if not variant.startswith("lrp-"):
            continue
        baseline = by_key.get((captioner, "baseline-" + variant[len("lrp-"):]))
        if baseline is None:
            continue
        if baseline["seeds"] != row["seeds"]:
            raise ValueError(f"finetune_table: {captioner}/{variant} has {row['seeds']} seeds, its baseline "
                             f"{baseline['seeds']}; they pair seed by seed")
        cells = {}
        for column, _, higher_better in COLUMNS:
            differences = [_number(a) - _number(b) for a, b in zip(row["cells"][column]["seeds"],
                                                                   baseline["cells"][column]["seeds"])]
            cells[column] = {**_cell(differences, []), "higher_is_better": higher_better}
        table["differences"].append({"captioner": captioner, "variant": f"{variant} - baseline-{variant[4:]}",
                                     "seeds": row["seeds"], "cells": cells})
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


def table_markdown(table: dict) -> str:
    """The table as markdown: ``mean [95 % interval over seeds] ±half-width of the image bootstrap interval (mean
    over seeds)``; difference rows ``mean [interval over seeds]`` (LRP minus baseline, paired by seed)."""
    columns = table["columns"]
    lines = ["| captioner | variant | seeds | " + " | ".join(columns) + " |",
             "|---|---|---|" + "---|" * len(columns)]
    for row in table["rows"] + table["differences"]:
        lines.append(f"| {row['captioner']} | {row['variant']} | {row['seeds']} | "
                     + " | ".join(_format(row["cells"][column]) for column in columns) + " |")
    images = sorted({n for row in table["rows"] for n in row.get("images") or [] if n})
    probes = sorted({n for row in table["rows"] for n in row.get("probe_images") or [] if n})
    lines += ["", f"Values: mean over seeds [95 % Student-t interval over seeds] ±half-width of the 95 % bootstrap "
              f"interval over images (mean over seeds; BLEU-4 and METEOR are corpus scores without one). Test images: "
              f"{', '.join(map(str, images)) or 'unknown'}; probe images: {', '.join(map(str, probes)) or 'unknown'}. "
              "Difference rows: LRP minus baseline fine-tuning, paired by seed (for CHAIR, the probe rate: negative "
              "is fewer hallucinations)."]
    return "\n".join(lines) + "\n"
