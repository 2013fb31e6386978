"""What the CLI fuzz cannot show with one bad invocation: interrupted runs (Ctrl-C, SIGTERM, a killed process) stop
cleanly and resume; a failed run leaves nothing that a later run would silently reuse; ``--overwrite`` replaces a
whole earlier run and nothing else; results of two runs are never mixed; errors show a traceback only on request;
the relevance ops refuse differentiation with a clear error."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from capxai import cli
from capxai.data import scenes
from capxai.data.vocabulary import Vocabulary
from capxai.train import TrainConfig, train
from helpers import TINY


@pytest.fixture(scope="module")
def small_scenes(tmp_path_factory):
    return scenes.generate(tmp_path_factory.mktemp("safety") / "scenes",
                           scenes.SceneConfig(train=8, val=3, test=4, image_size=32, seed=5), progress=False)


def _capxai(*arguments):
    # a shell without job control starts background jobs with SIGINT ignored, and children inherit that: give the
    # command the disposition an interactive terminal gives it, in a process group of its own (see _ctrl_c)
    return subprocess.Popen([sys.executable, "-m", "capxai.cli", *map(str, arguments)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _ctrl_c(process):
    """Ctrl-C as a terminal sends it: to the whole process group (the command, its image-decoding workers, the
    Java tokenizer of its validation metrics)."""
    os.killpg(process.pid, signal.SIGINT)


def _wait_for(predicate, seconds=120.0):
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("the command never reached the state to interrupt")
        time.sleep(0.05)


@pytest.mark.parametrize("stop, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"])
def test_interrupted_scene_generation_leaves_nothing(tmp_path, stop, status):
    out = tmp_path / "scenes"
    process = _capxai("data", "scenes", "--out", out, "--train", "20000", "--val", "1", "--test", "1")
    _wait_for(lambda: any(tmp_path.glob(".scenes.partial-*/images/train/*.png")))
    process.send_signal(stop)
    _, error = process.communicate(timeout=180)  # generous: a loaded 2-core machine; a hang still fails
    assert process.returncode == status
    assert error.strip().splitlines()[-1].startswith("capxai data scenes: interrupted;")
    assert "Traceback" not in error
    assert sorted(os.listdir(tmp_path)) == []  # no hidden staging folder, no output


def test_a_killed_generation_is_cleaned_up_by_the_next(tmp_path):
    out = tmp_path / "scenes"
    process = _capxai("data", "scenes", "--out", out, "--train", "20000", "--val", "1", "--test", "1")
    _wait_for(lambda: any(tmp_path.glob(".scenes.partial-*/images/train/*.png")))
    process.kill()  # no chance to clean up
    process.communicate(timeout=60)
    assert list(tmp_path.glob(".scenes.partial-*"))
    scenes.generate(out, scenes.SceneConfig(train=2, val=1, test=1, image_size=32), progress=False)
    assert [path.name for path in tmp_path.iterdir()] == ["scenes"]


def test_interrupted_training_keeps_the_last_epoch_and_resumes(small_scenes, tmp_path):
    out = tmp_path / "run"
    arguments = ["train", "--split-file", small_scenes / "dataset_scenes.json", "--image-root", small_scenes,
                 "--out", out, "--hidden", "8", "--attention-dim", "8", "--min-count", "1", "--image-size", "32",
                 "--batch-size", "1", "--max-length", "8", "--epochs", "40"]
    process = _capxai(*arguments)
    _wait_for(lambda: (out / "history.json").is_file() and len(json.loads(
        (out / "history.json").read_text())["epochs"]) >= 1)
    _ctrl_c(process)
    _, error = process.communicate(timeout=120)
    assert process.returncode == 130, error[-2000:]
    # the message is the last thing printed (Java may cut its own line short), and no worker adds a traceback
    assert error.rstrip().endswith("capxai train: interrupted; rerun the same command to resume"), error[-2000:]
    assert "Traceback" not in error, error[-2000:]
    done = len(json.loads((out / "history.json").read_text())["epochs"])
    assert not [path for path in out.iterdir() if path.name.endswith(".tmp")]
    resumed = cli.main([str(a) for a in arguments[:-1]] + [str(done + 1)])
    assert resumed == 0
    history = json.loads((out / "history.json").read_text())
    assert [epoch["epoch"] for epoch in history["epochs"]] == list(range(done + 1))


def test_a_failed_training_leaves_no_vocabulary_to_reuse(small_scenes, tmp_path, monkeypatch):
    """It used to leave OUT/vocabulary.json, which the next run with other vocabulary options reused silently."""
    from capxai.train import trainer

    def fail(*_):
        raise RuntimeError("validation failed")

    monkeypatch.setattr(trainer, "validation_cider", fail)
    with pytest.raises(RuntimeError):
        train(TINY, small_scenes / "dataset_scenes.json", small_scenes, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "vocabulary.json").exists()
    monkeypatch.undo()
    other = TrainConfig(**{**TINY.__dict__, "min_count": 3})
    train(other, small_scenes / "dataset_scenes.json", small_scenes, tmp_path / "run", progress=False)
    words = json.loads((tmp_path / "run" / "vocabulary.json").read_text())["words"]
    rebuilt = Vocabulary.build([s["tokens"] for i in json.loads((small_scenes / "dataset_scenes.json").read_text())[
        "images"] if i["split"] == "train" for s in i["sentences"]], 3)
    assert words == rebuilt.words


def test_resuming_a_finished_training_with_more_epochs_and_refusing_other_options(small_scenes, tmp_path, capsys):
    out = tmp_path / "run"
    train(TINY, small_scenes / "dataset_scenes.json", small_scenes, out, progress=False)
    more = train(TrainConfig(**{**TINY.__dict__, "epochs": 2}), small_scenes / "dataset_scenes.json", small_scenes,
                 out, progress=False)
    assert [epoch["epoch"] for epoch in more["epochs"]] == [0, 1]
    with pytest.raises(ValueError, match="trained with hidden = 8, not 16"):
        train(TrainConfig(**{**TINY.__dict__, "epochs": 3, "hidden": 16, "attention_dim": 8}),
              small_scenes / "dataset_scenes.json", small_scenes, out, progress=False)
    fresh = train(TrainConfig(**{**TINY.__dict__, "hidden": 16}), small_scenes / "dataset_scenes.json",
                  small_scenes, out, progress=False, overwrite=True)
    assert len(fresh["epochs"]) == 1 and fresh["config"]["hidden"] == 16


def test_evaluate_overwrite_replaces_the_whole_earlier_run(small_scenes, tmp_path, capsys):
    """``evaluate --overwrite`` used to leave an older model's hallucination file beside the new results."""
    out = tmp_path / "run"
    train(TINY, small_scenes / "dataset_scenes.json", small_scenes, out, progress=False)
    evaluation = tmp_path / "evaluation"
    arguments = ["evaluate", "--checkpoint", str(out / "best.pt"), "--split-file",
                 str(small_scenes / "dataset_scenes.json"), "--image-root", str(small_scenes), "--beam-size", "1",
                 "--out", str(evaluation)]
    assert cli.main(arguments) == 0
    first = json.loads((evaluation / "metrics_test_beam1.json").read_text())["run"]["run_id"]
    assert (evaluation / "hallucination_test_beam1.json").is_file()
    # the same split without objects beside it: this run has no hallucination file
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "dataset_scenes.json").write_text((small_scenes / "dataset_scenes.json").read_text())
    arguments[arguments.index("--split-file") + 1] = str(bare / "dataset_scenes.json")
    assert cli.main(arguments + ["--overwrite"]) == 0
    assert not (evaluation / "hallucination_test_beam1.json").exists()
    runs = {json.loads((evaluation / name).read_text())["run"]["run_id"] for name in ("metrics_test_beam1.json",)}
    runs |= {entry["run_id"] for entry in json.loads((evaluation / "captions_test_beam1.json").read_text())}
    assert len(runs) == 1 and first not in runs
    from capxai.evaluate.run import load_evaluation

    assert set(load_evaluation(evaluation, "test", 1)) == {"captions", "metrics"}
    metrics_path = evaluation / "metrics_test_beam1.json"
    metrics = json.loads(metrics_path.read_text())
    metrics_path.write_text(json.dumps({**metrics, "run": {**metrics["run"], "run_id": first}}))
    with pytest.raises(ValueError, match="results of different runs"):
        load_evaluation(evaluation, "test", 1)


def test_explain_overwrite_drops_figures_of_the_earlier_images(small_scenes, tmp_path, capsys):
    out = tmp_path / "run"
    train(TINY, small_scenes / "dataset_scenes.json", small_scenes, out, progress=False)
    first, second = sorted((small_scenes / "images" / "test").glob("*.png"))[:2]
    base = ["explain", "--checkpoint", str(out / "best.pt"), "--out", str(tmp_path / "explained")]
    assert cli.main(base + ["--images", str(first)]) == 0
    assert (tmp_path / "explained" / "lrp" / first.stem).is_dir()
    assert cli.main(base + ["--images", str(second), "--overwrite"]) == 0
    assert not (tmp_path / "explained" / "lrp" / first.stem).exists()
    assert (tmp_path / "explained" / "lrp" / second.stem).is_dir()


def test_shards_of_two_runs_are_never_loaded_together(small_scenes, tmp_path, capsys):
    from capxai.commands.explain_run import load_shards

    out = tmp_path / "run"
    train(TINY, small_scenes / "dataset_scenes.json", small_scenes, out, progress=False)
    explained = tmp_path / "explained"
    arguments = ["explain", "--checkpoint", str(out / "best.pt"), "--split-file",
                 str(small_scenes / "dataset_scenes.json"), "--shard-size", "2", "--out", str(explained)]
    assert cli.main(arguments) == 0
    shards = load_shards(explained / "lrp")
    assert len(shards) == 2 and len({shard["run_id"] for shard in shards}) == 1
    meta_path = explained / "lrp" / "shard-00001.images.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "run_id": "another-run"}))
    with pytest.raises(ValueError, match="belongs to run 'another-run'"):
        load_shards(explained / "lrp")


def test_scenes_overwrite_replaces_what_capxai_wrote(tmp_path):
    out = scenes.generate(tmp_path / "scenes", scenes.SceneConfig(train=3, val=1, test=1, image_size=32),
                          progress=False)
    scenes.generate(out, scenes.SceneConfig(train=1, val=1, test=1, image_size=32), overwrite=True, progress=False)
    assert len(list((out / "images" / "train").glob("*.png"))) == 1
    (out / "images" / "train" / "mine.txt").write_text("a note")
    with pytest.raises(FileExistsError, match="mine.txt"):
        scenes.generate(out, scenes.SceneConfig(train=2, val=1, test=1, image_size=32), overwrite=True,
                        progress=False)
    assert (out / "images" / "train" / "mine.txt").read_text() == "a note"


def test_debug_shows_the_traceback_and_bugs_say_so(small_scenes, tmp_path, capsys, monkeypatch):
    missing = ["evaluate", "--checkpoint", str(small_scenes / "dataset_scenes.json"), "--split-file",
               str(small_scenes / "dataset_scenes.json"), "--image-root", str(small_scenes), "--out",
               str(tmp_path / "o")]
    assert cli.main(missing) == 2
    with pytest.raises(ValueError, match="dataset_scenes.json"):
        cli.main(["--debug", *missing])

    def broken(*_, **__):
        raise RuntimeError("a bug")

    monkeypatch.setattr(scenes, "generate", broken)
    assert cli.main(["data", "scenes", "--out", str(tmp_path / "s")]) == 1
    assert "internal error (RuntimeError: a bug); rerun with --debug" in capsys.readouterr().err


def test_ops_refuse_differentiation_clearly():
    from capxai.ops import lrp_linear

    x = torch.randn(2, 3, requires_grad=True)
    relevance = lrp_linear(x, torch.randn(4, 3), None, torch.ones(2, 4))
    with pytest.raises(RuntimeError, match="lrp_linear is not differentiable.*detach"):
        relevance.sum().backward()
    assert not lrp_linear(x.detach(), torch.randn(4, 3), None, torch.ones(2, 4)).requires_grad


def test_zero_denominators_are_not_blamed_on_overflow():
    from capxai.ops import lrp_linear

    zeros = torch.zeros(2, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="0/0; use eps > 0"):
        lrp_linear(zeros, torch.randn(4, 3, dtype=torch.float64), None, torch.ones(2, 4, dtype=torch.float64),
                   eps=0.0)
    cancelling = torch.tensor([[1e20, 1e20]])  # z = 0: the relevance is x * w / eps * R = 1e42 > float32's max
    with pytest.raises(ValueError, match="overflowed Float"):
        lrp_linear(cancelling, torch.tensor([[1.0, -1.0]]), None, torch.tensor([[1e20]]), eps=0.01)


def test_running_out_of_memory_names_the_batch_size_and_keeps_the_last_checkpoint(small_scenes, tmp_path, capsys,
                                                                                 monkeypatch):
    """A real allocation failure of the CPU allocator in the second epoch (what a batch too large for the machine
    raises): one line naming --batch-size and half of it, exit 2, the first epoch's checkpoint untouched."""
    from capxai.train import trainer

    out = tmp_path / "run"
    arguments = ["train", "--split-file", str(small_scenes / "dataset_scenes.json"), "--image-root", str(small_scenes),
                 "--out", str(out), "--hidden", "8", "--attention-dim", "8", "--min-count", "1", "--image-size", "32",
                 "--batch-size", "4", "--max-length", "8", "--workers", "0", "--epochs"]
    assert cli.main(arguments + ["1"]) == 0
    before = (out / "last.pt").read_bytes()
    capsys.readouterr()

    def too_large(*_):
        return torch.empty(1 << 60, dtype=torch.uint8)  # the allocator refuses: "can't allocate memory"

    monkeypatch.setattr(trainer, "_train_step", too_large)
    assert cli.main(arguments + ["2"]) == 2
    error = capsys.readouterr().err
    last = error.strip().splitlines()[-1]  # after the progress bars
    assert last.startswith("capxai train: out of memory at --batch-size 4 (") and "Traceback" not in error
    assert "try --batch-size 2; the last checkpoint is kept" in last
    assert (out / "last.pt").read_bytes() == before
    assert not [path for path in out.iterdir() if path.name.endswith(".tmp")]


def test_what_counts_as_out_of_memory():
    """The GPU's error (torch.OutOfMemoryError), the CPU allocator's, and Python's MemoryError; no other error."""
    from capxai.cli_checks import out_of_memory

    assert out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 bytes"))
    assert out_of_memory(MemoryError())
    assert not out_of_memory(RuntimeError("shape mismatch")) and not out_of_memory(ValueError("out of range"))
