"""The explanation metrics of ``capxai evaluate --explanations``: one module per metric, each in one registry, each
with typed per-word records and summaries that convert to the results json the report and the comparison read (the
shapes checked key by key on cases small enough to compute by hand)."""
import dataclasses
import importlib
import math
import pkgutil
from types import SimpleNamespace

import pytest
import torch

from capxai.evaluate import explanation_metrics
from capxai.evaluate.explanation_metrics import (EXPLANATION_METRICS, Batch, DetectionAUC, Explained,
                                                 ExplanationMetric, GroundingRecord, ImageAblationRecord,
                                                 InsertionDeletionRecord, MapStatistics, Measurements, Mention,
                                                 ModelStatistics, WordAblationRecord)
from capxai.evaluate.explanations import ExplanationSettings, _tables, tables_markdown
from capxai.evaluate.grounding import THRESHOLDS
from capxai.registry import UnknownChoice

ORDER = ["grounding", "image_ablation", "insertion_deletion", "word_ablation", "detection"]


def test_every_metric_module_registers_its_metric_in_measuring_order():
    assert list(EXPLANATION_METRICS) == ORDER
    modules = {name for _, name, _ in pkgutil.iter_modules(explanation_metrics.__path__)} - {"base"}
    for name in modules:
        importlib.import_module(f"capxai.evaluate.explanation_metrics.{name}")
    assert {type(metric).__module__.rsplit(".", 1)[1] for metric in EXPLANATION_METRICS.values()} == modules
    for name, metric in EXPLANATION_METRICS.items():
        assert isinstance(metric, ExplanationMetric) and EXPLANATION_METRICS.help(name)
    paths = [metric.path for metric in EXPLANATION_METRICS.values()]
    assert len(set(paths)) == len(paths)


def test_an_unknown_metric_is_refused_with_the_choices():
    with pytest.raises(UnknownChoice, match=r"unknown explanation_metric 'magic'; choose one of \['grounding', "
                                            r"'image_ablation', 'insertion_deletion', 'word_ablation', 'detection'\]"):
        EXPLANATION_METRICS["magic"]


def test_ablation_metrics_are_skipped_without_ablation():
    without = ExplanationSettings(methods=["lrp"], ablation=False)
    assert [name for name, metric in EXPLANATION_METRICS.items() if metric.enabled(without)] == ["grounding",
                                                                                                  "detection"]
    assert all(metric.enabled(ExplanationSettings(methods=["lrp"])) for metric in EXPLANATION_METRICS.values())


def test_records_are_frozen():
    record = WordAblationRecord(image=0, drop=0.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.drop = 0.0


def _interval(value, ci, images, words):
    return {"value": value, "ci": ci, "images": images, "words": words}


def test_word_ablation_table_is_the_json_of_before():
    # per image the same sum and count: the bootstrap interval is the value itself
    records = [WordAblationRecord(0, 0.25), WordAblationRecord(0, 0.75), WordAblationRecord(3, 0.5),
               WordAblationRecord(3, 0.5)]
    table = EXPLANATION_METRICS["word_ablation"].table({"random": records, "lrp": records[:2]})
    assert table == {"random": {"probability_drop": _interval(0.5, [0.5, 0.5], 2, 4)},
                     "lrp": {"probability_drop": _interval(0.5, [None, None], 1, 2)}}


def test_image_ablation_leaves_out_the_drop_of_words_that_disappeared():
    records = [ImageAblationRecord(image, disappeared, drop) for image in (0, 1)
               for disappeared, drop in ((True, math.nan), (False, 0.25))]
    table = EXPLANATION_METRICS["image_ablation"].table({"random": records})
    assert table == {"random": {"disappeared": _interval(0.5, [0.5, 0.5], 2, 4),
                                "probability_drop": _interval(0.25, [0.25, 0.25], 2, 2)}}


def test_insertion_deletion_table_and_its_absence():
    records = [InsertionDeletionRecord(image, 0.75, 0.25) for image in (0, 1)]
    table = EXPLANATION_METRICS["insertion_deletion"].table({"lrp": records})
    assert table == {"lrp": {"insertion_auc": _interval(0.75, [0.75, 0.75], 2, 2),
                             "deletion_auc": _interval(0.25, [0.25, 0.25], 2, 2)}}


def test_grounding_table_has_every_threshold_and_the_categories():
    scores = tuple(1.0 - threshold for threshold in THRESHOLDS)  # exact: 1 - k/10 is what the test compares with
    records = [GroundingRecord(0, "ring", scores, 1.0), GroundingRecord(1, "ring", scores, 1.0),
               GroundingRecord(1, "box", (0.0,) * len(THRESHOLDS), 0.0)]
    table = EXPLANATION_METRICS["grounding"].table({"uniform": records})["uniform"]
    assert list(table) == ["thresholds", "pointing_game", "per_category"]
    assert list(table["thresholds"]) == ["0.0", "0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8", "0.9"]
    assert table["thresholds"]["0.0"]["value"] == pytest.approx(2 / 3) and table["thresholds"]["0.0"]["words"] == 3
    assert table["pointing_game"]["value"] == pytest.approx(2 / 3) and table["pointing_game"]["images"] == 2
    assert table["per_category"] == {"box": {"words": 1, "t0.0": 0.0, "t0.5": 0.0, "pointing_game": 0.0},
                                     "ring": {"words": 2, "t0.0": 1.0, "t0.5": 0.5, "pointing_game": 1.0}}


def _separable_detection():
    """Four images, each with one hallucinated and one present word: ``mean`` is higher on the hallucinated ones,
    ``max`` lower, the other statistics constant, ``word_relevance`` and the sentinel share missing."""
    model, maps = [], []
    for image in range(4):
        for hallucinated in (True, False):
            model.append(ModelStatistics(image, hallucinated, probability=0.5, sentinel_share=None))
            maps.append(MapStatistics(image, hallucinated, mean=float(hallucinated), max=float(not hallucinated),
                                      positive_mass=1.0, inside_share=0.5, word_relevance=None))
    return {"model": model, "lrp": maps}


def test_detection_summary_and_its_json():
    metric = EXPLANATION_METRICS["detection"]
    summary = metric.summarise(_separable_detection())
    perfect = DetectionAUC(value=1.0, ci=(1.0, 1.0), images=4, higher_means="hallucinated", detection_auc=1.0,
                           words=8)
    assert summary.statistics["lrp"]["mean"] == perfect
    assert summary.statistics["lrp"]["max"] == dataclasses.replace(perfect, value=0.0, ci=(0.0, 0.0),
                                                                   higher_means="present")
    chance = dataclasses.replace(perfect, value=0.5, ci=(0.5, 0.5), detection_auc=0.5)  # a constant statistic
    assert summary.statistics["lrp"]["positive_mass"] == summary.statistics["lrp"]["inside_share"] == chance
    # no word relevance, so no visual share
    assert list(summary.statistics["lrp"]) == ["mean", "max", "positive_mass", "inside_share", "concentration"]
    assert summary.statistics["model"] == {"probability": chance}  # no sentinel
    assert summary.best["model"].statistic == "probability" and summary.best["lrp"].statistic == "mean"  # first best
    assert (summary.words, summary.hallucinated) == (8, 4)
    table = metric.table(_separable_detection())
    assert list(table) == ["statistics", "best", "words", "hallucinated"]
    assert table["best"]["lrp"] == {"statistic": "mean", "value": 1.0, "ci": [1.0, 1.0], "images": 4,
                                    "higher_means": "hallucinated", "detection_auc": 1.0, "words": 8,
                                    "roc": {"fpr": [0.0, 0.0, 1.0], "tpr": [0.0, 1.0, 1.0]}}
    assert table["statistics"]["model"] == {"probability": {"value": 0.5, "ci": [0.5, 0.5], "images": 4,
                                                            "higher_means": "hallucinated", "detection_auc": 0.5,
                                                            "words": 8}}
    assert table["words"] == 8 and table["hallucinated"] == 4


def test_results_of_a_batch_without_object_words_keep_their_shape():
    settings = ExplanationSettings(methods=["lrp", "attention"], ablation=False)
    results = _tables(Measurements(), settings, images=3)
    assert list(results) == ["settings", "images", "grounding", "ablation", "detection"]
    assert results["images"] == 3 and results["settings"]["methods"] == ["lrp", "attention"]
    assert results["grounding"] == {} and results["ablation"] == {"image": {}, "words": {}}
    assert results["detection"] == {"statistics": {}, "best": {}}
    markdown = tables_markdown({**results, "seconds": {"decode": 1.0}})
    assert "## Word ablation" in markdown and "## Insertion / deletion" not in markdown
    assert markdown.endswith("Seconds: decode 1.0\n")


def test_measurements_keep_the_baseline_first_and_merge_batches():
    first, second = Measurements(), Measurements()
    first.add("word_ablation", "lrp", [WordAblationRecord(0, 0.5)])
    first.add("word_ablation", "random", [])  # nothing measured: no row in the table
    second.add("word_ablation", "random", [WordAblationRecord(1, 0.25)])
    second.add("word_ablation", "lrp", [WordAblationRecord(1, 0.75)])
    first.extend(second)
    rows = first.of("word_ablation", ["random", "lrp", "attention"])
    assert list(rows) == ["random", "lrp"] and [r.drop for r in rows["lrp"]] == [0.5, 0.75]
    results = _tables(first, ExplanationSettings(methods=["lrp"]), images=2)
    assert list(results["ablation"]["words"]) == ["random", "lrp"]


def _mention(hallucinated=False):
    box = torch.zeros(1, 4, 4, dtype=torch.bool)
    box[0, :2, :2] = True  # the top-left quarter
    return Mention(row=0, image=7, t=1, category="ring", word=5, hallucinated=hallucinated, boxes=box,
                   pointing_boxes=box, union=box[0])


def _batch(mentions):
    explanation = SimpleNamespace(probabilities=torch.tensor([[0.5, 0.25]]), beta=torch.tensor([[1.0, 0.75]]),
                                  word_relevance=None)
    return Batch(model=None, images=torch.zeros(1, 3, 4, 4), features=None, explanation=explanation, positions=[7],
                 mentions=mentions, settings=None, generator=torch.Generator().manual_seed(0)), explanation


def test_grounding_and_detection_measure_a_hand_made_map():
    mentions = [_mention()]
    batch, explanation = _batch(mentions)
    heatmaps = torch.zeros(1, 2, 4, 4)
    heatmaps[0, 1, 0, 0] = 2.0  # all relevance on one pixel inside the box
    heatmaps[0, 1, 3, 3] = -1.0
    explained = Explained(method="lrp", explanation=explanation, heatmaps=heatmaps, mentions=mentions)
    grounding = EXPLANATION_METRICS["grounding"]
    assert grounding.measure(batch, explained) == [GroundingRecord(7, "ring", (1.0,) * len(THRESHOLDS), 1.0)]
    # a uniform map: the box's share of the image everywhere, and a pointing game won at that rate
    assert grounding.baseline(batch) == [GroundingRecord(7, "ring", (0.25,) * len(THRESHOLDS), 0.25)]
    detection = EXPLANATION_METRICS["detection"]
    assert detection.measure(batch, explained) == [MapStatistics(7, False, mean=1 / 16, max=2.0, positive_mass=2.0,
                                                                 inside_share=1.0, word_relevance=None,
                                                                 concentration=1.0, visual_share=None)]
    # with word relevance: the image's share of image + words (1 of 1 + 3), and the mass spread over two pixels
    explanation.word_relevance = torch.tensor([[[0.0, 0.0], [1.0, 2.0]]])
    (record,) = detection.measure(batch, explained)
    assert record.visual_share == pytest.approx(1 / 4) and record.word_relevance == 3.0  # 2 - 1 of (2 - 1) + 3
    assert record.concentration == 1.0  # one pixel of 16 is the top 5 %: all of the positive mass
    uniform = Explained(method="lrp", explanation=explanation, heatmaps=torch.ones(1, 2, 4, 4), mentions=mentions)
    assert detection.measure(batch, uniform)[0].concentration == pytest.approx(1 / 16)
    assert detection.baseline(batch) == [ModelStatistics(7, False, probability=0.25, sentinel_share=0.25)]
