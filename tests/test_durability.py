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


# -- crafted datasets: no file outside the image root is read -------------------------------------------------------
def _split_file(tmp_path, filepath, filename):
    import json

    entry = {"filepath": filepath, "filename": filename, "split": "test", "cocoid": 1,
             "sentences": [{"tokens": ["a", "ball"], "raw": "a ball"}]}
    path = tmp_path / "split.json"
    path.write_text(json.dumps({"images": [entry]}))
    return path


@pytest.mark.parametrize("filepath, filename", [("../..", "etc/passwd"), ("images", "../../secret.png"),
                                                ("/etc", "passwd"), ("", "/etc/passwd"), ("C:\\Windows", "x.png"),
                                                ("images", "a\0.png")],
                         ids=["dotdot-folder", "dotdot-name", "absolute-folder", "absolute-name", "windows", "nul"])
def test_a_split_entry_that_leaves_the_image_root_is_refused(tmp_path, filepath, filename):
    from capxai.data.captions import load_karpathy

    with pytest.raises(ValueError, match="leaves the image root"):
        load_karpathy(_split_file(tmp_path, filepath, filename))


def test_a_symbolic_link_out_of_the_image_root_is_refused_and_one_inside_is_not(tmp_path):
    from PIL import Image

    from capxai.data.captions import CaptionDataset
    from capxai.data.vocabulary import Vocabulary

    outside, root = tmp_path / "outside", tmp_path / "root"
    (root / "images").mkdir(parents=True)
    outside.mkdir()
    Image.new("RGB", (8, 8)).save(outside / "secret.png")
    Image.new("RGB", (8, 8)).save(root / "images" / "real.png")
    (root / "images" / "link.png").symlink_to(outside / "secret.png")
    (root / "images" / "inside.png").symlink_to(root / "images" / "real.png")
    vocabulary = Vocabulary.build([["a", "ball"]], 1)
    for name, allowed in (("link.png", False), ("inside.png", True)):
        dataset = CaptionDataset(_split_file(tmp_path, "images", name), root, "test", vocabulary, image_size=8)
        if allowed:
            dataset.check_images()
            assert dataset[0]["image"].shape == (3, 8, 8)
        else:
            with pytest.raises(ValueError, match="leaves --image-root"):
                dataset.check_images()
            with pytest.raises(ValueError, match="leaves --image-root"):
                dataset[0]
    # the image root itself may be a link (datasets often live on another disk)
    (tmp_path / "root-link").symlink_to(root)
    linked = CaptionDataset(_split_file(tmp_path, "images", "real.png"), tmp_path / "root-link", "test", vocabulary,
                            image_size=8)
    linked.check_images()
