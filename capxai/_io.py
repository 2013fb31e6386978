"""Writing results without ever leaving a half-written file: write to a temporary file beside the target, then
rename it into place (atomic on POSIX); and the fingerprint of a file that results name (a checkpoint, a split).

Two things a rename alone does not give:

* **Permissions**: ``mkstemp`` and ``mkdtemp`` create 0600 files and 0700 folders whatever the user's umask, so a
  colleague in the same group, or a web server showing ``report.html``, could not read a result. Every file and
  staging folder made here gets the mode the user's umask gives any file (0644 / 0755 under the usual 022).
* **Durability**: a rename is atomic but not durable until its folder is synced; a machine that loses power after
  "saved" could come back without the file (or with the old one). The file's bytes are synced before the rename and
  the folder after it.
"""
import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator


def current_umask() -> int:
    """The process's umask (read from /proc where it can be read without changing it, which is thread-safe)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a new file gets under the user's umask (what ``open(path, "w")`` would create)."""
    return 0o666 & ~current_umask()


def folder_mode() -> int:
    """The mode a new folder gets under the user's umask (what ``mkdir`` would create)."""
    return 0o777 & ~current_umask()


def sync_folder(folder) -> None:
    """Makes the renames and creations inside ``folder`` durable (fsync of the folder itself; a no-op where a folder
    cannot be opened, e.g. on Windows)."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:  # some file systems refuse fsync on a folder: nothing more can be done there
        pass
    finally:
        os.close(handle)


def staging_folder(parent, prefix: str) -> Path:
    """A new hidden folder in ``parent`` (made if missing) with the mode of a folder the user would make, to be
    filled and renamed into place (``mkdtemp`` alone gives 0700)."""
    Path(parent).mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.chmod(folder, folder_mode())
    return folder


@contextlib.contextmanager
def atomic_path(path) -> Iterator[str]:
    """Yields a temporary path beside ``path``; when the block succeeds it replaces ``path`` (its bytes synced
    first, the folder after), else it is removed. The file gets the mode the user's umask gives new files."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(handle, file_mode())
    finally:
        os.close(handle)
    try:
        yield temporary
        _sync_file(temporary)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    sync_folder(path.parent)


def _sync_file(path) -> None:
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def atomic_write_text(path, text: str) -> Path:
    """Writes ``text`` to ``path`` atomically; the folder is created if missing."""
    with atomic_path(path) as temporary, open(temporary, "w") as stream:
        stream.write(text)
    return Path(path)


def atomic_write_json(path, payload) -> Path:
    """Writes ``payload`` as indented json to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def file_sha256(path) -> str:
    """The sha256 of a file's bytes (hex), read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
