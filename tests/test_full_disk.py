"""A full disk (issue 24): a write that fails half-way leaves the earlier checkpoint and results as they were, no
temporary file, and stops the command with one line naming the file and the cause.

A file-size limit (RLIMIT_FSIZE, what ``ulimit -f`` sets) makes a write fail with EFBIG at a chosen size, the way a
full disk fails it with ENOSPC; Python ignores SIGXFSZ, so the write raises instead of killing the process. The
limit is set on this process and lifted in a ``finally``; only the soft limit changes."""
import contextlib
import errno
import hashlib
import json
import resource
import shutil
from pathlib import Path

import pytest
import torch

from capxai import _io, cli
from capxai.data import scenes
from capxai.models.checkpoint import save_checkpoint
from capxai.train import train
from helpers import TINY


@contextlib.contextmanager
def file_size_limit(size: int):
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def fingerprints(folder: Path) -> dict:
    """Every file under ``folder`` (hidden ones too) with the sha256 of its bytes."""
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def leftovers(folder: Path) -> list:
    return [path for path in folder.rglob("*") if path.name.endswith(".tmp") or path.name.startswith(".report-")]


@pytest.fixture(scope="module")
def small_scenes(tmp_path_factory):
    return scenes.generate(tmp_path_factory.mktemp("full-disk") / "scenes",
                           scenes.SceneConfig(train=8, val=3, test=4, image_size=32, seed=5), progress=False)


WRITERS = {
    "torch": lambda path, size: _io.atomic_torch_save(path, {"w": torch.zeros(size)}),
    "checkpoint": lambda path, size: save_checkpoint(path, {"w": torch.zeros(size)}),
    "json": lambda path, size: _io.atomic_write_json(path, {"w": [0] * size}),
}


@pytest.mark.parametrize("writer", list(WRITERS))
def test_a_write_past_the_limit_keeps_the_earlier_file_and_names_the_target(tmp_path, writer):
    target = tmp_path / "result.bin"
    WRITERS[writer](target, 10)
    before = target.read_bytes()
    with file_size_limit(20_000), pytest.raises(_io.WriteFailed) as failed:
        WRITERS[writer](target, 100_000)
    assert failed.value.errno == errno.EFBIG and failed.value.filename == str(target)
    assert "the earlier one is kept" in str(failed.value)
    assert target.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["result.bin"]
    with file_size_limit(20_000), pytest.raises(_io.WriteFailed, match="nothing half-written was left"):
        WRITERS[writer](tmp_path / "new.bin", 100_000)
    assert [p.name for p in tmp_path.iterdir()] == ["result.bin"]


def test_files_written_together_name_the_one_that_did_not_fit_and_replace_none(tmp_path):
    small, large, last = tmp_path / "best.pt", tmp_path / "last.pt", tmp_path / "history.json"
    writers = {small: lambda t: _io.torch_save({"w": torch.zeros(10)}, t),
               large: lambda t: _io.torch_save({"w": torch.zeros(100_000)}, t), last: _io.json_writer({"a": 1})}
    with file_size_limit(20_000), pytest.raises(_io.WriteFailed) as failed:
        _io.write_together(writers)
    assert failed.value.filename == str(large) and not list(tmp_path.iterdir())
    assert _io.write_together(writers) == [small, large, last] and sorted(tmp_path.iterdir()) == sorted(writers)


def test_other_failures_are_not_called_a_full_disk(tmp_path):
    with pytest.raises(ZeroDivisionError), _io.atomic_path(tmp_path / "x") as temporary:
        Path(temporary).write_text("half")
        _ = 1 / 0
    assert not list(tmp_path.iterdir())


def _train_arguments(scenes_root, out, epochs):
    return ["train", "--split-file", str(scenes_root / "dataset_scenes.json"), "--image-root", str(scenes_root),
            "--out", str(out), "--hidden", "8", "--attention-dim", "8", "--min-count", "1", "--image-size", "32",
            "--batch-size", "4", "--max-length", "8", "--epochs", str(epochs), "--workers", "0"]


def _one_line(capsys) -> str:
    """The command's one message (progress bars aside), with no traceback."""
    error = capsys.readouterr().err
    messages = [line for line in error.splitlines() if line.startswith("capxai ")]
    assert len(messages) == 1 and "Traceback" not in error, error
    return messages[0]


def test_training_on_a_full_disk_keeps_the_last_checkpoint_and_resumes(small_scenes, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(_train_arguments(small_scenes, out, 1)) == 0
    capsys.readouterr()
    before = fingerprints(out)
    with file_size_limit((out / "last.pt").stat().st_size // 2):
        status = cli.main(_train_arguments(small_scenes, out, 2))
    error = _one_line(capsys)
    assert status == 2, error
    assert error.startswith(f"capxai train: {out / 'last.pt'}: could not be written: File too large"), error
    assert "the earlier one is kept" in error
    assert fingerprints(out) == before and not leftovers(out)
    assert cli.main(_train_arguments(small_scenes, out, 2)) == 0  # the same command resumes once there is space
    assert [epoch["epoch"] for epoch in json.loads((out / "history.json").read_text())["epochs"]] == [0, 1]


@pytest.mark.slow  # make durability-check (CI)
def test_an_evaluation_on_a_full_disk_keeps_the_earlier_results(small_scenes, tmp_path, capsys):
    train(TINY, small_scenes / "dataset_scenes.json", small_scenes, tmp_path / "run", progress=False)
    evaluation = tmp_path / "evaluation"
    arguments = ["evaluate", "--checkpoint", str(tmp_path / "run" / "best.pt"), "--split-file",
                 str(small_scenes / "dataset_scenes.json"), "--image-root", str(small_scenes), "--out",
                 str(evaluation), "--workers", "0"]  # a worker's batches travel as files in /dev/shm: the limit
    # would stop them too (and torch's loader then waits for them for ever); a full disk leaves /dev/shm alone
    assert cli.main(arguments + ["--beam-size", "1"]) == 0
    capsys.readouterr()
    before = fingerprints(evaluation)
    sizes = sorted(path.stat().st_size for path in evaluation.iterdir())
    # a limit the tokenizer's temporary file and the first results pass but a later result does not (the results
    # are written all or none); then one that stops the tokenizer (pycocoevalcap's) before anything is written
    for limit, where, run in ((sizes[-2] + 1, str(evaluation), ["--beam-size", "1", "--overwrite"]),
                              (256, "the PTB tokenizer's temporary file", ["--beam-size", "2"])):
        with file_size_limit(limit):
            status = cli.main(arguments + run)
        error = _one_line(capsys)
        assert status == 2 and "File too large" in error and where in error, error
        assert fingerprints(evaluation) == before and not leftovers(evaluation), (limit, run)


@pytest.mark.slow  # make durability-check (CI)
def test_a_report_on_a_full_disk_keeps_the_earlier_page_and_pictures(tiny_demo, tmp_path, capsys, monkeypatch):
    from capxai.report import html_report

    run_dir = tmp_path / "run"
    shutil.copytree(tiny_demo[0], run_dir)
    capsys.readouterr()
    before = fingerprints(run_dir)
    largest_picture = max(path.stat().st_size for path in (run_dir / "report_files").rglob("*") if path.is_file())
    for limit, where in ((4096, "a picture"), (largest_picture + 1, "the page")):
        if where == "the page":  # every picture fits, the page (made larger than any picture) does not
            document = html_report.document
            monkeypatch.setattr(html_report, "document",
                                lambda *a, document=document: document(*a) + " " * (largest_picture + 2))
        with file_size_limit(limit):
            status = cli.main(["report", str(run_dir), "--overwrite"])
        error = _one_line(capsys)
        assert status == 2 and "File too large" in error and "the earlier one is kept" in error, (where, error)
        assert ".report-" not in error, error  # the user never sees the staging folder: name what they know
        assert fingerprints(run_dir) == before and not leftovers(run_dir), where
