"""The demo (make demo) end to end on a tiny configuration: every stage's result is there, the report is written,
a second run reuses everything, a missing result is recomputed alone, another configuration is refused."""
import dataclasses
import json

import pytest

from capxai import demo
from capxai._io import atomic_write_json

from conftest import TINY_DEMO as TINY
from helpers import torch_threads


def test_every_stage_ran_and_wrote_its_result(tiny_demo):
    out, times = tiny_demo
    for captioner in demo.CAPTIONERS:
        assert (out / f"captioner-{captioner}" / "best.pt").is_file()
        tuned = captioner in demo.FINETUNED
        variants = ("", "-baseline", "-lrp", "-gated") if tuned else ("",)
        for folder in (f"eval-{captioner}{variant}" for variant in variants):
            assert (out / folder / "hallucination_test_beam3.json").is_file()
            assert (out / folder / "explanations_test_beam3.json").is_file()
        for method in demo.METHODS:
            assert (out / f"explain-{captioner}" / method / "explanation.pt").is_file()
        assert (out / f"explain-{captioner}-contrast" / "lrp" / "explanation.pt").is_file()
        tuning = ("finetune lrp", "finetune baseline", "finetune gated", "evaluate lrp", "evaluate gated")
        stages = ("train", "evaluate", "explain", "explain contrast") + (tuning if tuned else ())
        for stage in stages:  # run, not reused (a stage in this process may round to 0.0 s)
            assert times["stages"][f"{captioner} {stage}"]["seconds"] is not None
        assert tuned or not (out / f"finetune-{captioner}-lrp").exists()
    assert demo.CAPTIONERS == ("adaptive", "multihead", "transformer", "hf-vit-gpt2")
    table = json.loads((out / "finetune" / "finetune_table.json").read_text())
    assert {(row["captioner"], row["variant"]) for row in table["rows"]} == {
        (c, v) for c in demo.FINETUNED for v in ("xe", "baseline-xe", "lrp-xe", "gated-xe")}
    assert (out / "report.html").is_file() and (out / "demo.json").is_file()
    report = (out / "report.html").read_text()
    assert "transformer" in report and "hf-vit-gpt2" in report
    assert len(list((out / "logs").glob("*.log"))) == 5


def test_second_run_reuses_every_stage_and_recomputes_only_what_is_missing(tiny_demo, capsys):
    out, _ = tiny_demo
    checkpoint = out / "captioner-adaptive" / "best.pt"
    before = checkpoint.stat().st_mtime_ns
    with torch_threads(1):
        times = demo.run_demo(out, TINY, in_process=True)
    assert all(entry.get("note") == "reused" for name, entry in times["stages"].items()
               if name not in ("finetune table", "report"))
    assert checkpoint.stat().st_mtime_ns == before
    (out / "eval-multihead-lrp" / "metrics_test_beam3.json").unlink()  # as if stopped during that evaluation
    with torch_threads(1):
        times = demo.run_demo(out, TINY, in_process=True)
    recomputed = [name for name, entry in times["stages"].items() if entry.get("note") != "reused"]
    assert recomputed == ["multihead evaluate lrp", "finetune table", "report"]
    assert "reused" in capsys.readouterr().out


def test_commands_in_process_leave_the_process_as_they_found_it(tiny_trained, tmp_path):
    """A command run in this process (the tests' demo) writes its output to its log, and leaves the random
    generators its training seeded, torch's threads, the signal handlers, the working folder and the output streams
    as they were; a failing one names its log, as a process of its own does."""
    import os
    import random
    import signal
    import sys

    import numpy as np
    import torch

    _, data = tiny_trained
    runner = demo.Runner(tmp_path, threads=1, in_process=True)
    train = ["train", "--split-file", str(data / "dataset_scenes.json"), "--image-root", str(data), "--epochs", "1",
             "--seed", "5", "--device", "cpu", "--workers", "0", *TINY.train_arguments]
    torch.manual_seed(123)
    random.seed(123)
    np.random.seed(123)

    def state():
        return (torch.random.get_rng_state(), random.getstate(), str(np.random.get_state()), torch.get_num_threads(),
                signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM), os.getcwd(), sys.stdout, sys.stderr)

    before = state()
    with torch_threads(1):
        runner.run_chain("adaptive", [demo.Stage("train", lambda: [*train, "--out", str(tmp_path / "model")],
                                                 lambda: False)])
    after = state()
    assert torch.equal(before[0], after[0]) and before[1:] == after[1:]
    assert (tmp_path / "model" / "best.pt").is_file()
    assert "$ capxai train" in (tmp_path / "logs" / "adaptive.log").read_text()
    with pytest.raises(RuntimeError, match=r"(?s)capxai train failed \(exit 2\).*adaptive\.log.*argument --hidden"):
        runner.run_chain("adaptive", [demo.Stage("train", lambda: [*train, "--out", str(tmp_path / "other"),
                                                                   "--hidden", "0"], lambda: False)])
    assert state()[3:] == before[3:]


def test_ctrl_c_during_a_command_in_process_stops_the_demo(tmp_path):
    """Ctrl-C while a command runs in this process stops the demo (KeyboardInterrupt, as in the demo's own process),
    not reported as a command that failed."""
    import os
    import signal
    import threading

    runner = demo.Runner(tmp_path, threads=1, in_process=True)
    log = tmp_path / "logs" / "demo.log"
    scenes = ["data", "scenes", "--out", str(tmp_path / "scenes"), "--train", "100000", "--val", "1", "--test", "1"]
    finished = threading.Event()

    def ctrl_c_once_drawing():  # the command's progress bar in its log: it is inside the command (minutes of work)
        while not finished.wait(0.05):
            if log.is_file() and "scenes:" in log.read_text():
                os.kill(os.getpid(), signal.SIGINT)
                return

    pressing = threading.Thread(target=ctrl_c_once_drawing)
    pressing.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            runner.run_chain("demo", [demo.Stage("scenes", lambda: scenes, lambda: False)])
    finally:
        finished.set()
        pressing.join()
    assert "capxai data scenes: interrupted" in log.read_text()


def test_a_folder_with_other_settings_is_refused(tiny_demo):
    out, _ = tiny_demo
    with pytest.raises(SystemExit, match="other settings"):
        demo.run_demo(out, demo.QUICK)


def test_a_foreign_folder_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match="holds no demo"):
        demo.run_demo(tmp_path, TINY)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_failed_command_names_its_log(tmp_path):
    broken = demo.DemoConfig(scenes=(48, 10, 16), epochs=1, train_arguments=("--hidden", "0"))
    with pytest.raises(RuntimeError, match=r"capxai train failed .*adaptive\.log"):
        demo.run_demo(tmp_path / "run", broken, workers=1)


def test_atomic_write_leaves_nothing_half_written(tmp_path, monkeypatch):
    target = tmp_path / "result.json"
    atomic_write_json(target, {"a": 1})

    def disk_full(_):
        raise OSError("disk full")

    monkeypatch.setattr("capxai._io.os.fsync", disk_full)  # fails after the temporary file was written
    with pytest.raises(OSError, match="disk full"):
        atomic_write_json(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_overwrite_removes_what_the_earlier_demo_wrote_and_nothing_else(tmp_path):
    demo._check_folder(tmp_path, demo.QUICK, overwrite=False)
    (tmp_path / "eval-adaptive").mkdir()
    (tmp_path / "eval-adaptive" / "metrics_test_beam3.json").write_text("{}")
    (tmp_path / "report.html").write_text("old")
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match="other settings"):
        demo._check_folder(tmp_path, TINY, overwrite=False)
    assert (tmp_path / "report.html").is_file()
    demo._check_folder(tmp_path, TINY, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [demo.CONFIG_NAME, "notes.txt"]
    assert json.loads((tmp_path / demo.CONFIG_NAME).read_text())["scenes"] == list(TINY.scenes)


def _processes_naming(path) -> list:
    """Pids of the processes whose command line names ``path`` (read from /proc)."""
    from pathlib import Path

    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(path).encode() in cmdline.read_bytes():
                found.append(cmdline.parent.name)
        except OSError:  # the process ended meanwhile
            continue
    return found


@pytest.mark.e2e
def test_interrupted_demo_stops_its_workers_and_resumes(tmp_path):
    """SIGTERM while the workers evaluate: the demo exits 130 with its workers stopped, nothing half-written is left,
    and the next run finishes, reusing the trained captioners (the adaptive one: every stage kind, a quarter of the
    time)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    script = ("import signal, sys\nsys.path.insert(0, sys.argv[1])\nfrom conftest import TINY_DEMO\n"
              "from capxai import demo\nsignal.signal(signal.SIGTERM, demo._interrupt)\n"
              "config = demo.dataclasses.replace(TINY_DEMO, captioners=('adaptive',))\n"
              "try:\n    demo.run_demo(demo.Path(sys.argv[2]), config)\nexcept KeyboardInterrupt:\n    sys.exit(130)")
    tests = os.path.dirname(os.path.abspath(__file__))
    errors = tmp_path / "stderr.txt"
    with open(errors, "w") as stream:
        # started as from a shell's `&`: SIGINT ignored, which its workers inherit (they must be stopped otherwise)
        child = subprocess.Popen([sys.executable, "-c", script, tests, str(out)], stdout=subprocess.DEVNULL,
                                 stderr=stream, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    log = out / "logs" / "adaptive.log"
    deadline = time.time() + 300
    while time.time() < deadline and not (log.is_file() and "$ capxai evaluate" in log.read_text()):
        assert child.poll() is None, errors.read_text()
        time.sleep(0.2)
    assert "$ capxai evaluate" in log.read_text(), errors.read_text()  # the workers got that far
    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=50) == 130  # not the 60 s the demo waits before killing a worker
    assert "rerun the same command to resume" in errors.read_text()
    assert _processes_naming(out) == []
    assert not (out / "eval-adaptive" / "metrics_test_beam3.json").exists()  # evaluate writes its files at the end
    times = demo.run_demo(out, dataclasses.replace(TINY, captioners=("adaptive",)), workers=2)
    assert times["stages"]["adaptive train"]["note"] == "reused"
    assert times["stages"]["adaptive evaluate"]["seconds"] > 0
    assert (out / "report.html").is_file()


@pytest.mark.parametrize("kind", ["file", "corrupt config"])
def test_bad_demo_folders_are_refused_in_one_line(tmp_path, kind):
    if kind == "file":
        out = tmp_path / "notes.txt"
        out.write_text("mine")
        expected = "is a file"
    else:
        out = tmp_path / "run"
        out.mkdir()
        (out / demo.CONFIG_NAME).write_text("{broken")
        expected = "is not valid json"
    with pytest.raises(SystemExit, match=expected):
        demo.main(["--out", str(out)])
    assert sorted(p.name for p in tmp_path.rglob("*")) == sorted(
        ["notes.txt"] if kind == "file" else ["run", demo.CONFIG_NAME])


def test_unknown_captioners_are_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match=r"DemoConfig.captioners must be some of \('adaptive'"):
        demo.run_demo(tmp_path / "run", dataclasses.replace(TINY, captioners=("lstm9000",)))
    assert not (tmp_path / "run").exists()


def test_the_hf_captioner_may_train_longer_than_the_others(tmp_path):
    """``hf_epochs``: the ViT trained from scratch needs more epochs than the CNN captioners (QUICK gives it 5); its
    training stage is complete only after them."""
    assert demo.QUICK.hf_epochs == 5 and demo.DemoConfig().hf_epochs == 0
    stages = demo.Demo(tmp_path, dataclasses.replace(TINY, hf_epochs=2))
    for captioner, epochs in (("hf-vit-gpt2", "2"), ("adaptive", str(TINY.epochs))):
        train = stages.captioner_stages(captioner)[0].arguments()
        assert train[train.index("--epochs") + 1] == epochs
