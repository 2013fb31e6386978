"""The demo (make demo) end to end on a tiny configuration: every stage's result is there, the report is written,
a second run reuses everything, a missing result is recomputed alone, another configuration is refused."""
import dataclasses
import json

import pytest

from capxai import demo
from capxai._io import atomic_write_json

from conftest import TINY_DEMO as TINY


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
        for stage in stages:
            assert times["stages"][f"{captioner} {stage}"]["seconds"] > 0
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
    times = demo.run_demo(out, TINY, workers=1)
    assert all(entry.get("note") == "reused" for name, entry in times["stages"].items()
               if name not in ("finetune table", "report"))
    assert checkpoint.stat().st_mtime_ns == before
    (out / "eval-multihead-lrp" / "metrics_test_beam3.json").unlink()  # as if stopped during that evaluation
    times = demo.run_demo(out, TINY, workers=1)
    recomputed = [name for name, entry in times["stages"].items() if entry.get("seconds")]
    assert recomputed == ["multihead evaluate lrp", "finetune table", "report"]
    assert "reused" in capsys.readouterr().out


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
