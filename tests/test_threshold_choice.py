"""``--threshold auto`` (capxai.train.threshold_choice, issue 35): the rule on known scores; on a tiny model the
choice reads the validation split and its CHAIR annotations only (never the test split, never the training images'
hidden instances, never the hidden flags); bad input named."""
import importlib
import json
import shutil

import pytest

from capxai import cli
from capxai.data import captions as captions_module
from capxai.train import FinetuneConfig, finetune
from capxai.train import threshold_choice
from capxai.train.threshold_choice import ValidationScores, choose_threshold

finetune_module = importlib.import_module("capxai.train.finetune")  # the module: capxai.train.finetune is the function


def _scores(cider, chair_i):
    return ValidationScores(cider=cider, chair_i=chair_i, images=10)


def test_the_rule_keeps_the_lowest_chair_within_two_percent_of_baseline_cider():
    baseline = _scores(1.00, 0.20)
    candidates = {0.4: _scores(0.99, 0.15), 0.5: _scores(0.97, 0.10), 0.6: _scores(1.02, 0.15)}
    threshold, why = choose_threshold(candidates, baseline)
    assert threshold == 0.4 and "CHAIR-i 0.150" in why  # 0.5 costs 3 % CIDEr; 0.4 and 0.6 tie: the lower
    assert choose_threshold({0.5: _scores(0.98, 0.19)}, baseline)[0] == 0.5  # exactly 2 % lower is allowed
    threshold, why = choose_threshold({0.5: _scores(0.90, 0.05), 0.6: _scores(1.1, 0.25)}, baseline)
    assert threshold is None and "no setting of [0.5, 0.6] lowered validation CHAIR-i" in why


@pytest.fixture
def spied(monkeypatch):
    """The splits opened and the instances files read while fine-tuning and choosing."""
    opened, read = [], []
    original_open, original_load = captions_module.open_split, threshold_choice.load_hallucination_data

    def open_split(split_file, image_root, split, *args, **kwargs):
        opened.append(split)
        return original_open(split_file, image_root, split, *args, **kwargs)

    def load_hallucination_data(instances, *args, **kwargs):
        read.append(str(instances))
        return original_load(instances, *args, **kwargs)

    for module in (finetune_module, threshold_choice):
        monkeypatch.setattr(module, "open_split", open_split)
    monkeypatch.setattr(threshold_choice, "load_hallucination_data", load_hallucination_data)
    monkeypatch.setattr(threshold_choice, "CANDIDATES", (0.4, 0.6))  # two candidates: seconds, not minutes
    return opened, read


def _auto(data, out, **options):
    config = FinetuneConfig(method="gated", threshold="auto", batch_size=8, **options)
    try:
        return finetune(config, data[0], data[1] / "dataset_scenes.json", data[1], out, progress=False)
    except ValueError as error:
        assert "no setting of [0.4, 0.6]" in str(error)  # the gate did not help this tiny model: named, not run
        return None


def test_auto_reads_neither_the_test_split_nor_hidden_instances(tiny_trained, tmp_path, spied):
    data = tmp_path / "scenes"
    shutil.copytree(tiny_trained[1], data)
    (data / "annotations" / "instances_train.json").unlink()  # the hidden instances only the oracle may read
    (data / "annotations" / "instances_test.json").unlink()
    for image in (data / "images" / "test").glob("*"):  # the test split cannot even be opened
        image.unlink()
    opened, read = spied
    history = _auto((tiny_trained[0], data), tmp_path / "auto")
    assert set(opened) == {"train", "val"} and read and all(path.endswith("instances_val.json") for path in read)
    record = json.loads((tmp_path / "auto" / "threshold_choice.json").read_text())
    assert set(record["candidates"]) == {"0.4", "0.6"} and record["split"] == "val"
    if record["chosen"] is None:
        assert history is None and not (tmp_path / "auto" / "best.pt").exists()
    else:
        chosen = tmp_path / "auto" / "threshold-choice" / f"gated-{record['chosen']:g}"
        assert (tmp_path / "auto" / "best.pt").read_bytes() == (chosen / "best.pt").read_bytes()
        assert history["threshold_choice"] == record and history["finetune"]["threshold"] == record["chosen"]
    # the hidden flags of the validation instances change nothing: CHAIR reads every annotated object alike
    instances = json.loads((data / "annotations" / "instances_val.json").read_text())
    for annotation in instances["annotations"]:
        annotation.pop("hidden", None)
    (data / "annotations" / "instances_val.json").write_text(json.dumps(instances))
    _auto((tiny_trained[0], data), tmp_path / "auto-unflagged")
    again = json.loads((tmp_path / "auto-unflagged" / "threshold_choice.json").read_text())
    assert (again["chosen"], again["candidates"], again["baseline"]) == (record["chosen"], record["candidates"],
                                                                         record["baseline"])


def test_bad_input_is_named(tiny_trained, tmp_path, capsys):
    with pytest.raises(ValueError, match="threshold 'auto' chooses the gate of method 'gated', not of 'baseline'"):
        FinetuneConfig(method="baseline", threshold="auto")
    with pytest.raises(ValueError, match=r"threshold must be in \[0, 1\] or 'auto'"):
        FinetuneConfig(method="gated", threshold=1.5)
    checkpoint, data = tiny_trained
    split = json.loads((data / "dataset_scenes.json").read_text())
    split["images"] = [entry for entry in split["images"] if entry["split"] != "val"]
    no_val = tmp_path / "no_val.json"
    no_val.write_text(json.dumps(split))
    arguments = ["finetune", "--checkpoint", str(checkpoint), "--split-file", str(no_val), "--image-root", str(data),
                 "--out", str(tmp_path / "out"), "--method", "gated", "--threshold", "auto"]
    assert cli.main(arguments) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "has no 'val' images" in error[0], error
    assert cli.main(arguments[:-1] + ["sometimes"]) == 2
    assert "--threshold" in capsys.readouterr().err


@pytest.mark.parametrize("helps", [True, False])
def test_the_chosen_model_is_written_and_an_unhelpful_gate_is_not_run(tiny_trained, tmp_path, spied, monkeypatch,
                                                                      helps):
    """Scores set by hand (the validation captions' CIDEr and CHAIR-i of each arm's folder): when 0.6 helps its
    model becomes OUT's, with the choice in its history; when none does, OUT gets only the record, and the error says
    why."""
    def scores(checkpoint, *args, **kwargs):
        arm = checkpoint.parent.name
        chair_i = {"baseline": 0.30, "gated-0.4": 0.35, "gated-0.6": 0.20 if helps else 0.31}[arm]
        return ValidationScores(cider=1.0, chair_i=chair_i, images=6)

    monkeypatch.setattr(threshold_choice, "validation_scores", scores)
    out = tmp_path / "auto"
    config = FinetuneConfig(method="gated", threshold="auto", batch_size=8)
    checkpoint, data = tiny_trained
    if not helps:
        with pytest.raises(ValueError, match=r"no setting of \[0.4, 0.6\] lowered validation CHAIR-i \(baseline "
                                             r"fine-tuning 0.300\)"):
            finetune(config, checkpoint, data / "dataset_scenes.json", data, out, progress=False)
        assert not (out / "best.pt").exists() and json.loads((out / "threshold_choice.json").read_text())["chosen"] \
            is None
        return
    history = finetune(config, checkpoint, data / "dataset_scenes.json", data, out, progress=False)
    assert history["threshold_choice"]["chosen"] == 0.6 and history["finetune"]["threshold"] == 0.6
    assert (out / "best.pt").read_bytes() == (out / "threshold-choice" / "gated-0.6" / "best.pt").read_bytes()
    assert json.loads((out / "history.json").read_text())["threshold_choice"]["why"].startswith("threshold 0.6")
