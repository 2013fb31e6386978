"""Writing results without ever leaving a half-written file: write to a temporary file beside the target, then
rename it into place (atomic on POSIX); and the fingerprint of a file that results name (a checkpoint, a split).

Two things a rename alone does not give:

* **Permissions**: ``mkstemp`` and ``mkdtemp`` create 0600 files and 0700 folders whatever the user's umask, so a
  colleague in the same group, or a web server showing ``report.html``, could not read a result. Every file and
  staging folder made here gets the mode the user's umask gives any file (0644 / 0755 under the usual 022).
* **Durability**: a rename is atomic but not durable until its folder is synced; a machine that loses power after
  "saved" could come back without the file (or with the old one). The file's bytes are synced before the rename and
  the folder after it.

A write that fails half-way because the disk is full (or a file-size limit or quota is reached) removes its
temporary file, keeps the file it would have replaced, and raises :class:`WriteFailed` naming the target, not the
temporary file (torch.save's own error there is "unexpected pos 704 vs 598").
"""
import contextlib
import errno
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional

_NO_SPACE = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


class WriteFailed(OSError):
    """Writing a result stopped half-way for want of space (a full disk, a file-size limit, a quota); ``filename``
    is the result that could not be written, and the file it would have replaced is kept."""


def no_space_cause(error: BaseException) -> Optional[OSError]:
    """The ENOSPC / EFBIG / EDQUOT error behind ``error`` (itself, or in its chain of causes), if any."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _NO_SPACE:
            return error
        error = error.__cause__ or error.__context__
    return None


def raise_if_no_space(error: BaseException, target, existed: bool, staging=None) -> None:
    """Raises :class:`WriteFailed` naming ``target`` when ``error`` comes from a full disk or a size limit (else
    returns, and the caller re-raises ``error``); ``existed``: whether an earlier ``target`` is kept. A
    :class:`WriteFailed` already names its file, unless that file is in ``staging`` (which the user never sees)."""
    cause = no_space_cause(error)
    if cause is None:
        return
    if isinstance(error, WriteFailed) and not (staging and Path(error.filename).is_relative_to(staging)):
        return
    kept = "the earlier one is kept" if existed else "nothing half-written was left"
    raise WriteFailed(cause.errno, f"could not be written: {cause.strerror} (a full disk, a file-size limit or a "
                      f"quota); {kept}", str(target)) from error


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
    except BaseException as error:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise_if_no_space(error, path, path.exists())
        raise
    sync_folder(path.parent)


def write_together(writers: Dict[Path, Callable[[str], None]]) -> List[Path]:
    """Writes files that belong together (a checkpoint and the history that names it): ``writers[path]`` writes
    the bytes of ``path`` to the temporary path it is given; every file is written before any is renamed into place
    (in the order given), so a write that fails (a full disk) replaces none of them. Returns the paths."""
    paths = [Path(path) for path in writers]
    with contextlib.ExitStack() as stack:  # exits run last-in first-out: enter in reverse to rename in order
        temporaries = {path: stack.enter_context(atomic_path(path)) for path in reversed(paths)}
        for path, write in zip(paths, writers.values()):
            try:
                write(temporaries[path])
            except BaseException as error:  # named here: the exits below would name the first file instead
                raise_if_no_space(error, path, path.exists())
                raise
    return paths


def remove_stale_temporaries(folder, older_than: float) -> List[Path]:
    """Removes the temporary files of :func:`atomic_path` (``.NAME.XXXXXXXX.tmp``) under ``folder`` that a process
    killed mid-write (SIGKILL, power loss) left, last changed before ``older_than`` (a ``time.time()``: a write of
    this run is never older). Call it holding the folder's run lock (:mod:`capxai.run_lock`)."""
    removed = []
    for path in Path(folder).rglob(".*.tmp"):
        name = path.name[1:-len(".tmp")]
        with contextlib.suppress(FileNotFoundError):
            if "." in name and len(name.rsplit(".", 1)[1]) == 8 and path.is_file() and \
                    path.stat().st_mtime < older_than:
                path.unlink()
                removed.append(path)
    return removed


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


def torch_save(payload, path) -> None:
    """``torch.save`` through a Python file object, so that a failed write keeps its OSError (torch's own writer
    reports only "unexpected pos 704 vs 598")."""
    import torch  # only the writers of tensors need it

    with open(path, "wb") as stream:
        torch.save(payload, stream)


def atomic_torch_save(path, payload) -> Path:
    """``torch.save(payload)`` to ``path`` atomically."""
    with atomic_path(path) as temporary:
        torch_save(payload, temporary)
    return Path(path)


def json_text(payload) -> str:
    """capxai's json files: indented, keys sorted, a final newline."""
    return json.dumps(payload, indent=2, sort_keys=True) + "\n"


def text_writer(text: str) -> Callable[[str], None]:
    """A writer of ``text`` for :func:`write_together`."""
    return lambda path: Path(path).write_text(text)


def json_writer(payload) -> Callable[[str], None]:
    """A writer of ``payload`` as capxai json for :func:`write_together`."""
    return text_writer(json_text(payload))


def atomic_write_json(path, payload) -> Path:
    """Writes ``payload`` as indented json to ``path`` atomically."""
    return atomic_write_text(path, json_text(payload))


def file_sha256(path) -> str:
    """The sha256 of a file's bytes (hex), read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
