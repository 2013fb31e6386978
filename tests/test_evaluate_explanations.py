"""``capxai evaluate --explanations``: every method measured on a tiny trained captioner, the result files
(json + markdown) with intervals, and clear errors for bad input (an explanation of another split, bad options)."""
import json

import pytest

from capxai import cli
from capxai.data.captions import open_split
from capxai.evaluate.explanations import ExplanationSettings, evaluate_explanations
from capxai.evaluate.hallucination import load_hallucination_data
from capxai.train import load_trained


def _arguments(checkpoint, data, out, *extra):
    return ["evaluate", "--checkpoint", str(checkpoint), "--split-file", str(data / "dataset_scenes.json"),
            "--image-root", str(data), "--beam-size", "1", "--out", str(out), *extra]


def test_evaluate_measures_every_method(grounded_model, tmp_path, capsys):
    checkpoint, data = grounded_model
    out = tmp_path / "evaluation"
    code = cli.main(_arguments(checkpoint, data, out, "--explanations", "all", "--explain-batch-size", "4",
                               "--ablation-patches", "8"))
    assert code == 0, capsys.readouterr().err
    results = json.loads((out / "explanations_test_beam1.json").read_text())
    methods = ["lrp", "gradcam", "guided-gradcam", "guided-backprop", "gradient-x-input", "attention",
               "integrated-gradients", "occlusion"]
    assert results["settings"]["methods"] == methods and results["images"] == 100
    detection = results["detection"]
    assert set(detection["statistics"]) == {"model", *methods} and detection["words"] > 50
    assert set(results["grounding"]) == {"uniform", *methods}
    assert set(results["ablation"]["image"]) == {"random", *methods}
    for entry in results["grounding"].values():
        for score in [*entry["thresholds"].values(), entry["pointing_game"]]:
            assert score["value"] is None or 0.0 <= score["value"] <= 1.0
    assert set(results["ablation"]["words"]) <= {"random", "lrp", "gradient-x-input"}
    curves = results["ablation"]["insertion_deletion"]  # beside the ablation: every method and a random order
    assert set(curves) == {"random", *methods}
    for entry in curves.values():
        for area in (entry["insertion_auc"], entry["deletion_auc"]):
            assert 0.0 <= area["value"] <= 1.0 and area["ci"][0] <= area["value"] <= area["ci"][1]
    assert "## Insertion / deletion" in (out / "explanations_test_beam1.md").read_text()
    chair = json.loads((out / "chair_test_beam1.json").read_text())
    assert set(chair) == {"overall", "imgToEval", "run"} and len(chair["imgToEval"]) == 100
    assert (out / "explanations_test_beam1.md").read_text().startswith("# Explanations of test")
    hallucination = json.loads((out / "hallucination_test_beam1.json").read_text())
    assert "frequent_words" in hallucination and hallucination["chair"]["overall"]["CHAIRi_ci"] is not None


def test_explain_limit_measures_that_many_images(tiny_trained, tmp_path, capsys):
    checkpoint, data = tiny_trained
    out = tmp_path / "evaluation"
    code = cli.main(_arguments(checkpoint, data, out, "--explanations", "lrp,attention", "--explain-limit", "3",
                               "--no-ablation"))
    assert code == 0, capsys.readouterr().err
    results = json.loads((out / "explanations_test_beam1.json").read_text())
    assert results["images"] == 3
    assert len(json.loads((out / "captions_test_beam1.json").read_text())) == 7  # captions: every image


def test_limited_images_are_spread_over_the_split():
    from capxai.evaluate.explanations import spread_positions

    assert spread_positions(10, None) == list(range(10)) == spread_positions(10, 20)
    assert spread_positions(2000, 300)[0] == 0 and spread_positions(2000, 300)[-1] == 1999
    chosen = spread_positions(2000, 300)
    assert len(set(chosen)) == 300 and sum(p >= 1000 for p in chosen) == 150  # half from each half of the split
    assert spread_positions(7, 1) == [0]


def test_roc_points_match_sklearn_auc_in_either_orientation():
    import numpy as np
    from sklearn.metrics import auc, roc_auc_score

    from capxai.evaluate.explanations import roc_points

    generator = np.random.default_rng(0)
    labels = generator.integers(0, 2, 500)
    scores = labels * 0.5 + generator.normal(size=500)
    for higher_means, oriented in (("hallucinated", scores), ("present", -scores)):
        points = roc_points(labels, oriented if higher_means == "hallucinated" else scores, higher_means)
        assert len(points["fpr"]) <= 101 and points["fpr"][0] == 0.0 and points["fpr"][-1] == 1.0
        assert np.all(np.diff(points["fpr"]) >= 0) and np.all(np.diff(points["tpr"]) >= 0)
        expected = roc_auc_score(labels, scores if higher_means == "hallucinated" else -scores)
        assert abs(auc(points["fpr"], points["tpr"]) - expected) < 0.01


def test_explanations_of_another_split_are_refused(tiny_trained):
    checkpoint, data = tiny_trained
    model, vocabulary, config = load_trained(checkpoint)
    test = open_split(data / "dataset_scenes.json", data, "test", vocabulary, config.max_length, config.image_size)
    val_boxes = load_hallucination_data(data / "annotations" / "instances_val.json", data / "synonyms.txt",
                                        data / "dataset_scenes.json")
    with pytest.raises(ValueError, match="no entry for 7 images"):
        evaluate_explanations(model, test, val_boxes, ExplanationSettings(methods=["attention"]), progress=False)


@pytest.mark.parametrize("extra, message", [
    (["--explanations", "lrp,magic"], "--explanations must be 'all' or some of"),
    (["--explanations", "all", "--ablation-grid", "2", "--ablation-patches", "5"], "patches \\(5\\) must be at most"),
    (["--explanations", "lrp", "--instances", "{data}/missing.json"], "does not exist"),
    (["--explain-limit", "3"], "--explain-limit needs --explanations"),
])
def test_bad_options_stop_before_any_work(tiny_trained, tmp_path, capsys, extra, message):
    checkpoint, data = tiny_trained
    out = tmp_path / "evaluation"
    extra = [item.replace("{data}", str(data)) for item in extra]
    assert cli.main(_arguments(checkpoint, data, out, *extra)) == 2
    assert pytest.importorskip("re").search(message, capsys.readouterr().err)
    assert not out.exists() or not any(out.glob("*.json"))
