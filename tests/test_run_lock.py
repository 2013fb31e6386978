"""Concurrent runs (issue 24): a second capxai run into a folder another run is writing is refused at once, naming
the first's pid, and writes nothing; the lock of a process that died (even by SIGKILL) is taken over; a bad
invocation takes no lock that outlives it; torchrun's other processes take none."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from capxai import cli
from capxai.data import scenes
from capxai.run_lock import FolderInUse, folder_lock, lock_file_of

HOLD = """
import sys, time
from capxai.run_lock import folder_lock
with folder_lock(sys.argv[1], sys.argv[2]):
    print("held", flush=True)
    time.sleep(600)
"""


def _holder(folder, command="train"):
    """A process holding ``folder``'s lock, as a running ``capxai COMMAND`` would."""
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), command], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


@pytest.fixture(scope="module")
def small_scenes(tmp_path_factory):
    return scenes.generate(tmp_path_factory.mktemp("lock") / "scenes",
                           scenes.SceneConfig(train=6, val=2, test=3, image_size=32, seed=5), progress=False)


def test_a_held_folder_is_refused_with_the_holders_pid_and_a_dead_holders_lock_is_taken_over(tmp_path):
    holder = _holder(tmp_path / "out")
    try:
        with pytest.raises(FolderInUse, match=rf"in use by another capxai run \(pid {holder.pid}: capxai train"):
            with folder_lock(tmp_path / "out", "evaluate"):
                pass
        with folder_lock(tmp_path / "other", "evaluate"):  # another folder is free
            pass
    finally:
        holder.send_signal(signal.SIGKILL)  # no clean-up at all: the kernel drops the flock
        holder.wait()
    assert lock_file_of(tmp_path / "out").is_file()  # its stale text is still there
    with folder_lock(tmp_path / "out", "evaluate") as taken:
        assert json.loads(taken.read_text())["pid"] == os.getpid()
    assert not (tmp_path / "out").exists()  # the lock lives outside the folder: nothing was created there


def test_the_same_folder_by_another_spelling_is_the_same_lock(tmp_path, monkeypatch):
    (tmp_path / "out").mkdir()
    monkeypatch.chdir(tmp_path)
    os.symlink(tmp_path / "out", tmp_path / "link")
    assert lock_file_of("out") == lock_file_of(tmp_path / "out") == lock_file_of("link/") == lock_file_of("./out")


def test_torchrun_processes_other_than_the_first_take_no_lock(tmp_path, monkeypatch):
    holder = _holder(tmp_path / "out")
    try:
        monkeypatch.setenv("RANK", "1")
        with folder_lock(tmp_path / "out", "train") as taken:
            assert taken is None
        monkeypatch.setenv("RANK", "0")
        with pytest.raises(FolderInUse):
            with folder_lock(tmp_path / "out", "train"):
                pass
    finally:
        holder.kill()
        holder.wait()


def _commands(small_scenes, checkpoint, out):
    data = ["--split-file", str(small_scenes / "dataset_scenes.json"), "--image-root", str(small_scenes)]
    tiny = ["--hidden", "8", "--attention-dim", "8", "--min-count", "1", "--image-size", "32", "--epochs", "1",
            "--workers", "0"]
    return {
        "train": ["train", *data, "--out", str(out), *tiny],
        "finetune": ["finetune", "--checkpoint", str(checkpoint), *data, "--out", str(out), "--epochs", "1",
                     "--method", "baseline",
                     "--workers", "0"],
        "evaluate": ["evaluate", "--checkpoint", str(checkpoint), *data, "--out", str(out), "--beam-size", "1",
                     "--workers", "0"],
        "explain": ["explain", "--checkpoint", str(checkpoint), "--images",
                    str(sorted((small_scenes / "images" / "test").glob("*.png"))[0]), "--out", str(out)],
        "data scenes": ["data", "scenes", "--out", str(out), "--train", "2", "--val", "1", "--test", "1"],
        "report": ["report", str(out)],
    }


def test_every_writing_command_is_refused_while_another_run_holds_its_folder(small_scenes, tmp_path, capsys):
    assert cli.main(_commands(small_scenes, None, tmp_path / "trained")["train"]) == 0
    checkpoint = tmp_path / "trained" / "best.pt"
    out = tmp_path / "busy"
    out.mkdir()
    commands = _commands(small_scenes, checkpoint, out)
    holder = _holder(out, "train")
    capsys.readouterr()
    try:
        for name, arguments in commands.items():
            assert cli.main(arguments) == 2, name
            error = capsys.readouterr().err.strip()
            assert error == (f"capxai {name}: {out} is in use by another capxai run (pid {holder.pid}: capxai "
                             f"train, started {json.loads(lock_file_of(out).read_text())['started']}); wait for it "
                             "to finish or choose another --out (two runs into one folder would mix their files)")
            assert not any(out.iterdir()), name  # nothing written
    finally:
        holder.kill()
        holder.wait()
    assert cli.main(commands["evaluate"]) == 0  # free again


@pytest.mark.slow  # make durability-check (CI)
def test_two_real_runs_into_one_folder(tmp_path):
    """Two ``capxai data scenes`` started together: exactly one writes the folder, the other is refused."""
    out = tmp_path / "scenes"
    arguments = [sys.executable, "-m", "capxai", "data", "scenes", "--out", str(out), "--train", "40", "--val", "2",
                 "--test", "2", "--overwrite"]  # --overwrite: the second has no other reason to stop
    first = subprocess.Popen(arguments, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not lock_file_of(out).is_file() or str(first.pid) not in lock_file_of(out).read_text():
        assert time.monotonic() < deadline and first.poll() is None, "the first run never took the lock"
        time.sleep(0.02)
    first.send_signal(signal.SIGSTOP)  # paused while it holds the folder, however fast it would be
    try:
        second = subprocess.run(arguments, capture_output=True, text=True, timeout=120)
    finally:
        first.send_signal(signal.SIGCONT)
    _, first_error = first.communicate(timeout=300)
    assert first.returncode == 0, first_error[-2000:]
    assert second.returncode == 2 and f"in use by another capxai run (pid {first.pid}" in second.stderr
    assert len(json.loads((out / "dataset_scenes.json").read_text())["images"]) == 44


def test_a_killed_writes_temporary_files_are_removed_by_the_next_run_and_nothing_else(small_scenes, tmp_path):
    """SIGKILL mid-write leaves ``.NAME.XXXXXXXX.tmp`` beside the result (no handler runs); the next run into the
    folder, holding its lock, removes those older than itself, and no file of another shape."""
    from capxai._io import remove_stale_temporaries

    out = tmp_path / "run"
    arguments = _commands(small_scenes, None, out)["train"]
    assert cli.main(arguments) == 0
    stale = [out / ".last.pt.k3j_9x2a.tmp", out / "sub" / ".shard-00000.pt.abcdefgh.tmp"]
    kept = [out / ".notes.tmp", out / "notes.tmp", out / ".x.toolongname.tmp"]
    for path in stale + kept:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"half")
        os.utime(path, (time.time() - 60, time.time() - 60))
    fresh = out / ".history.json.zzzzzzzz.tmp"  # one being written by this run now
    fresh.write_bytes(b"half")
    assert sorted(remove_stale_temporaries(out, older_than=time.time() - 1)) == sorted(stale)
    assert fresh.exists() and all(path.exists() for path in kept)
    stale[0].write_bytes(b"half")
    os.utime(stale[0], (time.time() - 60, time.time() - 60))
    assert cli.main(arguments) == 0  # a finished run: resuming it does nothing but take the lock and tidy up
    assert not stale[0].exists()


def _explain_overwrite_worker(rank, port, checkpoint, data, out):
    """One torchrun process of ``explain --split --overwrite``; process 0 is slow to remove the earlier run, so a
    process that did not wait for it would write its new shard before the removal deletes it."""
    import torch

    from capxai.commands.explain_run import explain_split
    from capxai.models import load_trained
    from capxai.outputs import OutputFolder
    from capxai.runtime import run_settings

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2")
    torch.set_num_threads(1)
    original = OutputFolder.remove_group

    def slow_remove(self, *args, **kwargs):
        time.sleep(3)
        return original(self, *args, **kwargs)

    OutputFolder.remove_group = slow_remove
    run = run_settings("cpu")
    model, vocabulary, config = load_trained(checkpoint)
    explain_split(model, vocabulary, split_file=data / "dataset_scenes.json", image_root=data, split="test",
                  out_dir=out, methods=["attention"], image_size=config.image_size, shard_size=1, beam_size=2,
                  progress=False, overwrite=True, checkpoint=checkpoint, run=run)
    torch.distributed.destroy_process_group()


@pytest.mark.slow  # make durability-check (CI)
def test_overwrite_under_two_gloo_processes_waits_for_the_removal(small_scenes, tmp_path):
    import socket

    import torch.multiprocessing as mp

    from capxai.commands.explain_run import explain_split
    from capxai.models import load_trained

    assert cli.main(_commands(small_scenes, None, tmp_path / "trained")["train"]) == 0
    checkpoint = tmp_path / "trained" / "best.pt"
    model, vocabulary, config = load_trained(checkpoint)
    out = tmp_path / "explained"
    explain_split(model, vocabulary, split_file=small_scenes / "dataset_scenes.json", image_root=small_scenes,
                  split="test", out_dir=out, methods=["attention"], image_size=config.image_size, shard_size=1,
                  beam_size=1, progress=False, checkpoint=checkpoint)  # the earlier run: beam 1
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(_explain_overwrite_worker, args=(port, checkpoint, small_scenes, out), nprocs=2, join=True)
    shards = sorted(path.name for path in (out / "attention").glob("shard-*.pt"))
    assert shards == [f"shard-{i:05d}.pt" for i in range(3)]  # 3 test images, one a shard, both processes' shards
    assert json.loads((out / "attention" / "run.json").read_text())["beam_size"] == 2
