"""Files the user changed (issue 24): the manifest keeps each written file's size and sha256; ``--overwrite``
refuses to replace (or remove) a file edited since capxai wrote it, naming it, unless ``--overwrite`` is given
twice or ``--force``. Before, ``--overwrite`` replaced an edited file silently."""
import json

import pytest

from capxai import cli
from capxai.data import scenes
from capxai.outputs import MANIFEST, OutputFolder
from capxai.train import train
from helpers import TINY


@pytest.fixture(scope="module")
def small_scenes(tmp_path_factory):
    return scenes.generate(tmp_path_factory.mktemp("changed") / "scenes",
                           scenes.SceneConfig(train=6, val=2, test=3, image_size=32, seed=5), progress=False)


def test_the_manifest_keeps_a_fingerprint_and_tells_an_edit_even_of_the_same_size(tmp_path):
    output = OutputFolder(tmp_path, "evaluate")
    (tmp_path / "a.json").write_text('{"x": 1}')
    (tmp_path / "b.json").write_text('{"x": 2}')
    output.record([tmp_path / "a.json", tmp_path / "b.json"], "group")
    entry = output.entries()["a.json"]
    assert entry["size"] == 8 and len(entry["sha256"]) == 64
    assert output.changed_files([tmp_path / "a.json", tmp_path / "b.json"]) == []
    (tmp_path / "a.json").write_text('{"x": 7}')  # same size, other bytes
    (tmp_path / "b.json").write_text('{"x": 2, "note": "mine"}')
    assert output.changed_files([tmp_path / "a.json", tmp_path / "b.json"]) == [tmp_path / "a.json",
                                                                                tmp_path / "b.json"]
    with pytest.raises(FileExistsError, match=r"a.json \(and 1 more\) was changed after capxai evaluate wrote it"):
        output.check_writable([tmp_path / "a.json"], overwrite=1, group="group")
    output.check_writable([tmp_path / "a.json"], overwrite=2, group="group")


def test_a_manifest_from_before_fingerprints_counts_its_files_as_unchanged(tmp_path):
    (tmp_path / "a.json").write_text("{}")
    (tmp_path / MANIFEST).write_text(json.dumps({"format": "capxai-manifest", "version": 1, "files": {
        "a.json": {"command": "evaluate", "group": "g", "run": "r"}}}))
    output = OutputFolder(tmp_path, "evaluate")
    assert output.changed_files([tmp_path / "a.json"]) == []
    output.check_writable([tmp_path / "a.json"], overwrite=1)


def _edit(path):
    path.write_text(path.read_text().rstrip() + " \n")  # the smallest edit: one more space


@pytest.fixture(scope="module")
def trained(small_scenes, tmp_path_factory):
    out = tmp_path_factory.mktemp("changed-model")
    train(TINY, small_scenes / "dataset_scenes.json", small_scenes, out, progress=False)
    return out / "best.pt"


@pytest.mark.slow  # make durability-check (CI)
def test_evaluate_overwrite_refuses_an_edited_result(small_scenes, trained, tmp_path, capsys):
    evaluation = tmp_path / "evaluation"
    arguments = ["evaluate", "--checkpoint", str(trained), "--split-file", str(small_scenes / "dataset_scenes.json"),
                 "--image-root", str(small_scenes), "--beam-size", "1", "--out", str(evaluation), "--workers", "0"]
    assert cli.main(arguments) == 0
    edited = evaluation / "metrics_test_beam1.json"
    _edit(edited)
    mine = edited.read_text()
    capsys.readouterr()
    assert cli.main(arguments + ["--overwrite"]) == 2
    error = capsys.readouterr().err.strip()
    assert error == (f"capxai evaluate: {edited} was changed after capxai evaluate wrote it; capxai does not "
                     "replace a file you edited: move it away, or pass --overwrite twice (or --force) to replace "
                     "it anyway")
    assert edited.read_text() == mine
    assert cli.main(arguments + ["--overwrite", "--overwrite"]) == 0  # (--force: the train and scenes test below)
    assert edited.read_text() != mine
    assert OutputFolder(evaluation, "evaluate").changed_files(evaluation.glob("*.json")) == []  # recorded anew


def test_train_overwrite_refuses_an_edited_history_and_scenes_an_edited_split(small_scenes, tmp_path, capsys):
    out = tmp_path / "run"
    arguments = ["train", "--split-file", str(small_scenes / "dataset_scenes.json"), "--image-root",
                 str(small_scenes), "--out", str(out), "--hidden", "8", "--attention-dim", "8", "--min-count", "1",
                 "--image-size", "32", "--epochs", "1", "--workers", "0"]
    assert cli.main(arguments) == 0
    _edit(out / "history.json")
    capsys.readouterr()
    assert cli.main(arguments + ["--overwrite"]) == 2
    assert "history.json was changed after capxai train wrote it" in capsys.readouterr().err
    assert cli.main(arguments + ["--force"]) == 0

    generated = tmp_path / "scenes"
    command = ["data", "scenes", "--out", str(generated), "--train", "2", "--val", "1", "--test", "1"]
    assert cli.main(command) == 0
    _edit(generated / "dataset_scenes.json")
    mine = (generated / "dataset_scenes.json").read_text()
    assert cli.main(command + ["--overwrite"]) == 2
    assert "dataset_scenes.json was changed after capxai data scenes wrote it" in capsys.readouterr().err
    assert (generated / "dataset_scenes.json").read_text() == mine
    assert cli.main(command + ["--overwrite", "--overwrite"]) == 0
