"""The fine-tuning results table: means, t intervals over seeds, image intervals, paired differences, undefined
values, and refusals (rows on other images, a row given twice, unpaired seed counts)."""
import json

import pytest
from scipy import stats

from capxai import cli
from capxai.evaluate.comparison import COLUMNS, finetune_table, seed_interval, table_markdown


def _evaluation(scale: float, images=("1", "2", "3"), precision=0.5) -> dict:
    """An evaluation as capxai evaluate writes it, every value derived from ``scale``."""
    ci = [scale - 0.01, scale + 0.01]
    return {
        "metrics": {"overall": {"Bleu_4": scale, "METEOR": scale, "ROUGE_L": scale, "CIDEr": scale},
                    "imgToEval": {i: {"CIDEr": scale + k * 0.1, "ROUGE_L": scale} for k, i in enumerate(images)},
                    "run": {"images": len(images)}},
        "hallucination": {
            "chair": {"overall": {"CHAIRs": scale, "CHAIRs_ci": ci, "CHAIRi": scale, "CHAIRi_ci": ci}},
            "chair_probes": {"overall": {"CHAIRs": scale, "CHAIRs_ci": ci, "CHAIRi": scale, "CHAIRi_ci": ci}},
            "probes": {"rate": scale, "rate_ci": ci, "images": 2},
            "frequent_words": {"overall": {"precision": {"value": precision, "ci": [None, None]},
                                           "recall": {"value": scale, "ci": ci}, "f1": {"value": scale, "ci": ci}}}},
        "explanations": {"grounding": {"lrp": {"thresholds": {"0.0": {"value": scale, "ci": ci}}}}},
    }


def test_seed_interval_is_students_t():
    values = [0.2, 0.3, 0.7]
    mean, sem = sum(values) / 3, stats.sem(values)
    low, high = seed_interval(values)
    half = stats.t.ppf(0.975, 2) * sem
    assert low == pytest.approx(mean - half) and high == pytest.approx(mean + half)
    assert seed_interval([0.5]) is None


def test_rows_and_paired_differences():
    lrp = [("e1", _evaluation(0.2)), ("e2", _evaluation(0.3)), ("e3", _evaluation(0.4))]
    baseline = [("b1", _evaluation(0.25)), ("b2", _evaluation(0.33)), ("b3", _evaluation(0.5))]
    table = finetune_table([("adaptive", "xe", [("c", _evaluation(0.6))]), ("adaptive", "baseline-xe", baseline),
                            ("adaptive", "lrp-xe", lrp)])
    assert table["columns"] == [name for name, _, _ in COLUMNS]
    row = table["rows"][2]
    assert row["cells"]["CHAIR-s"]["mean"] == pytest.approx(0.3)
    assert row["cells"]["CHAIR-s"]["seed_ci"] == pytest.approx(seed_interval([0.2, 0.3, 0.4]))
    assert row["cells"]["CHAIR-s"]["image_ci"][0] == pytest.approx([0.19, 0.21])
    assert row["cells"]["CIDEr"]["image_ci"][0] is not None  # bootstrapped from the per-image scores
    assert row["cells"]["BLEU-4"]["image_ci"] == [None, None, None]  # a corpus score: no image interval
    (difference,) = table["differences"]
    assert difference["variant"] == "lrp-xe - baseline-xe"
    assert difference["cells"]["CHAIR-s"]["seeds"] == pytest.approx([-0.05, -0.03, -0.1])
    assert difference["cells"]["CHAIR-s"]["seed_ci"] == pytest.approx(seed_interval([-0.05, -0.03, -0.1]))
    assert difference["cells"]["CHAIR-s"]["higher_is_better"] is False
    text = table_markdown(table)
    assert "| adaptive | lrp-xe | 3 | 0.300 [" in text and "lrp-xe - baseline-xe" in text
    json.dumps(table, allow_nan=False)  # strict json


def test_undefined_values_are_null_and_na():
    table = finetune_table([("m", "lrp-xe", [("a", _evaluation(0.2, precision=None))]),
                            ("m", "baseline-xe", [("b", _evaluation(0.2))])])
    cell = table["rows"][0]["cells"]["freq. precision"]
    assert cell["mean"] is None and cell["seeds"] == [None] and cell["image_ci"] == [None]
    assert table["differences"][0]["cells"]["freq. precision"]["mean"] is None
    assert "n/a" in table_markdown(table)
    json.dumps(table, allow_nan=False)


def test_refusals():
    with pytest.raises(ValueError, match="other images"):
        finetune_table([("m", "xe", [("a", _evaluation(0.2)), ("b", _evaluation(0.2, images=("1", "2")))])])
    with pytest.raises(ValueError, match="given twice"):
        finetune_table([("m", "xe", [("a", _evaluation(0.2))]), ("m", "xe", [("b", _evaluation(0.2))])])
    with pytest.raises(ValueError, match="pair seed by seed"):
        finetune_table([("m", "lrp-xe", [("a", _evaluation(0.2)), ("b", _evaluation(0.3))]),
                        ("m", "baseline-xe", [("c", _evaluation(0.2))])])
    broken = _evaluation(0.2)
    del broken["explanations"]["grounding"]
    with pytest.raises(ValueError, match="explanations/grounding"):
        finetune_table([("m", "xe", [("a", broken)])])
    unexplained = _evaluation(0.2)  # evaluated without --explanations: the column is n/a, the rest is there
    del unexplained["explanations"]
    cells = finetune_table([("m", "xe", [("a", unexplained)])])["rows"][0]["cells"]
    assert cells["LRP grounding t=0"]["mean"] is None and cells["CIDEr"]["mean"] == pytest.approx(0.2)
    broken = _evaluation(0.2)
    del broken["hallucination"]["probes"]
    with pytest.raises(ValueError, match="hallucination/probes"):
        finetune_table([("m", "xe", [("a", broken)])])
    ungrounded = _evaluation(0.2)  # explained, but no object word had a box: n/a, not an error
    ungrounded["explanations"]["grounding"] = {}
    assert finetune_table([("m", "xe", [("a", ungrounded)])])["rows"][0]["cells"]["LRP grounding t=0"]["mean"] is None
    with pytest.raises(ValueError, match="no evaluation"):
        finetune_table([("m", "xe", [])])


def test_cli_refuses_a_bad_row(tmp_path, capsys):
    assert cli.main(["finetune-table", "--row", "no-label", "--out", str(tmp_path / "t")]) == 2
    assert "CAPTIONER/VARIANT=FOLDER" in capsys.readouterr().err
    assert cli.main(["finetune-table", "--row", f"m/xe={tmp_path / 'missing'}", "--out", str(tmp_path / "t")]) == 2
    assert "does not exist" in capsys.readouterr().err


def _with_images(evaluation: dict, rng, hallucinating: float) -> dict:
    """``evaluation`` with per-image records for 300 images: CIDEr, CHAIR's words, probe flags."""
    import copy

    evaluation = copy.deepcopy(evaluation)
    images = [str(i) for i in range(300)]
    evaluation["metrics"]["imgToEval"] = {i: {"CIDEr": float(rng.gamma(2.0, 0.5)), "ROUGE_L": 0.5} for i in images}
    chair_images = {}
    for i in images:
        mentions = int(rng.integers(0, 4))
        wrong = int(rng.binomial(mentions, hallucinating))
        chair_images[i] = {"mscoco_hallucinated_words": [["box", "box"]] * wrong,
                           "mscoco_generated_words": ["box"] * mentions}
    evaluation["hallucination"]["chair"]["imgToEval"] = chair_images
    evaluation["hallucination"]["chair_probes"]["imgToEval"] = {i: chair_images[i] for i in images[:100]}
    evaluation["hallucination"]["probes"]["per_image"] = {i: int(rng.random() < hallucinating) for i in images[:100]}
    return evaluation


def test_differences_carry_paired_image_intervals():
    """Each seed's interval of a difference resamples the same images for both models (checked against a naive
    paired bootstrap), and excludes 0 when one model hallucinates much less on the same images."""
    import numpy as np

    from capxai.evaluate.comparison import per_image_counts

    rng = np.random.default_rng(0)
    method = _with_images(_evaluation(0.2), rng, 0.1)
    baseline = _with_images(_evaluation(0.25), rng, 0.4)
    baseline["metrics"]["imgToEval"] = method["metrics"]["imgToEval"]  # equal CIDEr on every image
    table = finetune_table([("m", "baseline-xe", [("b", baseline)]), ("m", "gated-xe", [("g", method)])])
    (difference,) = table["differences"]
    assert difference["variant"] == "gated-xe - baseline-xe"
    for column in ("CHAIR-i", "probe rate"):
        low, high = difference["cells"][column]["image_ci"][0]
        assert high < 0  # fewer hallucinations, and the images say so
        mine, theirs = per_image_counts(method, column, "g"), per_image_counts(baseline, column, "b")
        ids = sorted(mine)
        a = np.array([mine[i] for i in ids])
        b = np.array([theirs[i] for i in ids])
        draws = rng.integers(0, len(ids), (4000, len(ids)))
        naive = a[draws, 0].sum(1) / a[draws, 1].sum(1) - b[draws, 0].sum(1) / b[draws, 1].sum(1)
        assert [low, high] == pytest.approx(np.percentile(naive, [2.5, 97.5]), abs=0.01)
    assert difference["cells"]["CIDEr"]["image_ci"][0] == pytest.approx([0.0, 0.0])  # paired: no difference at all
    assert difference["cells"]["BLEU-4"]["image_ci"] == []
    assert "img [" in table_markdown(table)


def test_differences_carry_an_interval_over_starts_seeds_and_images(tmp_path):
    """Two starts of two seeds each: the difference's "all" interval is the hierarchical bootstrap of the four
    models' per-image counts, laid out [start, seed, image, (method, baseline)]; one model gets none."""
    import numpy as np

    from capxai.evaluate.comparison import per_image_counts
    from capxai.evaluate.hierarchical import hierarchical_ci, paired_ratio_difference

    rng = np.random.default_rng(3)
    methods = [(f"g{k}", _with_images(_evaluation(0.2), rng, 0.1 + 0.05 * k)) for k in range(4)]
    baselines = [(f"b{k}", _with_images(_evaluation(0.2), rng, 0.4)) for k in range(4)]
    for (_, method), (_, baseline) in zip(methods, baselines):  # the same images in every model
        baseline["metrics"]["imgToEval"] = method["metrics"]["imgToEval"]
    table = finetune_table([("m", "baseline-xe", baselines), ("m", "gated-xe", methods)], {"m": [0, 0, 1, 1]})
    (difference,) = table["differences"]
    assert difference["starts"] == 2
    images = sorted(per_image_counts(methods[0][1], "CHAIR-i", "g0"))
    values = np.array([[[[*per_image_counts(methods[2 * s + r][1], "CHAIR-i", "g")[i],
                         *per_image_counts(baselines[2 * s + r][1], "CHAIR-i", "b")[i]] for i in images]
                        for r in range(2)] for s in range(2)])
    expected = hierarchical_ci(values, paired_ratio_difference)["ci"]
    assert difference["cells"]["CHAIR-i"]["hierarchical_ci"] == pytest.approx(expected)
    assert difference["cells"]["CHAIR-i"]["hierarchical_ci"][1] < 0 and "all [" in table_markdown(table)
    assert difference["cells"]["BLEU-4"]["hierarchical_ci"] is None
    single = finetune_table([("m", "baseline-xe", baselines[:1]), ("m", "gated-xe", methods[:1])])
    assert single["differences"][0]["cells"]["CHAIR-i"]["hierarchical_ci"] is None
    with pytest.raises(ValueError, match="4 evaluations per row and 3 start indices"):
        finetune_table([("m", "baseline-xe", baselines), ("m", "gated-xe", methods)], {"m": [0, 0, 1]})


def test_cli_reads_starts_between_semicolons(tmp_path, capsys):
    """``--row m/gated-xe=A,B;C,D``: two starts of two seeds; a row laid out otherwise than its captioner's others is
    refused in one line."""
    import numpy as np

    rng = np.random.default_rng(4)

    def folder(name, hallucinating):
        evaluation = _with_images(_evaluation(0.2), rng, hallucinating)
        path = tmp_path / name
        path.mkdir()
        stamp = {"run_id": name}
        (path / "metrics_test_beam3.json").write_text(json.dumps({**evaluation["metrics"], "run": stamp}))
        (path / "hallucination_test_beam3.json").write_text(json.dumps({**evaluation["hallucination"], "run": stamp}))
        return str(path)

    baselines = [folder(f"b{k}", 0.4) for k in range(4)]
    methods = [folder(f"g{k}", 0.1) for k in range(4)]
    common = ["finetune-table", "--out", str(tmp_path / "table")]
    rows = ["--row", f"m/baseline-xe={baselines[0]},{baselines[1]};{baselines[2]},{baselines[3]}",
            "--row", f"m/gated-xe={methods[0]},{methods[1]};{methods[2]},{methods[3]}"]
    assert cli.main(common + rows) == 0, capsys.readouterr().err
    table = json.loads((tmp_path / "table" / "finetune_table.json").read_text())
    assert table["differences"][0]["starts"] == 2 and table["differences"][0]["cells"]["CHAIR-i"]["hierarchical_ci"]
    capsys.readouterr()
    rows[-1] = f"m/gated-xe={methods[0]};{methods[1]},{methods[2]},{methods[3]}"
    assert cli.main(common + ["--overwrite"] + rows) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "are not laid out as the other rows of m" in error[0], error
