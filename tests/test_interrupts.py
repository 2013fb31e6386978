"""Ctrl-C and SIGTERM cannot be lost (issue 24): a stop whose exception was swallowed where it landed (C code that
clears errors, a finalizer) is raised again at the next item of any long loop; the handlers are those of the
command only while it runs. The probe of 200 SIGTERMs at random points of scene generation is a slow test."""
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest

from capxai.interrupts import Interrupted, StopSignals, deferred, stoppable


def _swallowing_call(number):
    """What numpy's Generator.choice did when the signal's handler ran inside it: the exception was cleared."""
    try:
        signal.raise_signal(number)
    except KeyboardInterrupt:
        pass


@pytest.mark.parametrize("number, exception", [(signal.SIGTERM, Interrupted), (signal.SIGINT, KeyboardInterrupt)],
                         ids=["sigterm", "ctrl-c"])
def test_a_swallowed_stop_is_raised_at_the_next_item(number, exception):
    done = []
    with StopSignals():
        with pytest.raises(exception):
            for item in stoppable(range(5)):
                done.append(item)
                if item == 1:
                    _swallowing_call(number)
    assert done == [0, 1]


@pytest.mark.parametrize("number, exception", [(signal.SIGTERM, Interrupted), (signal.SIGINT, KeyboardInterrupt)],
                         ids=["sigterm", "ctrl-c"])
def test_a_stop_inside_a_deferred_block_waits_for_its_end(number, exception):
    """Files put in place and recorded as capxai's are one step: a stop between the two (a training's last.pt was
    once left unrecorded, and the resumed run refused it) is raised only after both."""
    done = []
    with StopSignals():
        with pytest.raises(exception):
            with deferred():
                done.append("in place")
                signal.raise_signal(number)
                with deferred():  # nested: still waits for the outermost
                    done.append("nested")
                done.append("recorded")
            done.append("after the block")  # never reached
    assert done == ["in place", "nested", "recorded"]
    with StopSignals():
        with deferred():
            done.append("no stop")
    assert done[-1] == "no stop"


def test_the_handlers_are_the_commands_only_while_it_runs():
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with StopSignals() as stops:
        assert signal.getsignal(signal.SIGTERM) not in before
        _swallowing_call(signal.SIGTERM)
        stops.seen()  # the command caught it: nothing more is raised
        assert list(stoppable(range(3))) == [0, 1, 2]
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    assert list(stoppable(range(2))) == [0, 1]  # outside a command a loop never raises


@pytest.mark.slow
def test_200_sigterms_at_random_points_of_scene_generation_all_stop_it(tmp_path):
    """Each run: scene generation, SIGTERM at a random moment of its image loop; it must stop with exit 143 within
    60 s, one line, and leave nothing. Before the fix about 1 in 50 ran on to its last image."""
    rng = random.Random(0)
    for trial in range(200):
        root = tmp_path / str(trial)
        root.mkdir()
        process = subprocess.Popen([sys.executable, "-m", "capxai.cli", "data", "scenes", "--out", root / "scenes",
                                    "--train", "20000", "--val", "1", "--test", "1"], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, start_new_session=True)
        deadline = time.monotonic() + 120
        while not any(root.glob(".scenes.partial-*/images/train/*.png")):
            assert time.monotonic() < deadline and process.poll() is None, f"run {trial} never started"
            time.sleep(0.01)
        time.sleep(rng.random() * 0.3)
        process.send_signal(signal.SIGTERM)
        try:
            _, error = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            pytest.fail(f"run {trial}: still running 60 s after SIGTERM")
        assert process.returncode == 143, (trial, error[-1000:])
        assert "Traceback" not in error and error.strip().splitlines()[-1].startswith("capxai data scenes: interr")
        assert os.listdir(root) == [], (trial, os.listdir(root))
        shutil.rmtree(root)
