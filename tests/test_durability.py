"""Results that others can read and that survive a power cut (issue 24): every result file and folder capxai makes
follows the user's umask like any file the user writes (``mkstemp``/``mkdtemp`` alone give 0600 / 0700), and a
result's bytes are synced before its rename and its folder after it."""
import contextlib
import os
import stat

import pytest
import torch

from capxai import _io
from capxai.data import scenes
from capxai.models.checkpoint import save_checkpoint


@contextlib.contextmanager
def umask(mask):
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077], ids=oct)
def test_result_files_and_folders_follow_the_umask(tmp_path, mask):
    with umask(mask):
        assert _io.current_umask() == mask
        json_file = _io.atomic_write_json(tmp_path / "a" / "result.json", {"x": 1})
        text_file = _io.atomic_write_text(tmp_path / "notes.md", "text")
        with _io.atomic_path(tmp_path / "blob.bin") as temporary:
            with open(temporary, "wb") as stream:
                stream.write(b"\0" * 10)
        folder = _io.staging_folder(tmp_path / "b", ".staging-")
    for path in (json_file, text_file, tmp_path / "blob.bin"):
        assert mode(path) == 0o666 & ~mask, path
    assert mode(folder) == 0o777 & ~mask
    assert mode(tmp_path / "a") == 0o777 & ~mask


def test_a_checkpoint_and_generated_scenes_are_readable_by_the_group(tmp_path):
    with umask(0o027):
        checkpoint = save_checkpoint(tmp_path / "model.pt", {"weights": torch.zeros(2)})
        out = scenes.generate(tmp_path / "scenes", scenes.SceneConfig(train=2, val=1, test=1, image_size=32),
                              progress=False)
    assert mode(checkpoint) == 0o640
    assert mode(out) == 0o750  # the staging folder renamed into place
    assert mode(out / "dataset_scenes.json") == 0o640
    assert all(mode(path) == 0o640 for path in (out / "images").rglob("*.png"))


def test_the_bytes_are_synced_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    """The order a power cut cannot break: fsync(file), rename, fsync(folder)."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(handle):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{handle}")))
        real_fsync(handle)

    def replace(source, target):
        events.append(("rename", str(target)))
        real_replace(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    target = _io.atomic_write_json(tmp_path / "result.json", {"x": 1})
    assert [kind for kind, _ in events] == ["fsync", "rename", "fsync"]
    assert events[0][1].startswith(str(tmp_path / ".result.json."))
    assert events[1][1] == str(target) and events[2][1] == str(tmp_path)
