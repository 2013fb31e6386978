"""One capxai run per output folder at a time.

Two ``capxai train`` (or evaluate, explain, finetune, data scenes, report) into the same folder at once would
interleave their files; the second is refused, naming the first's pid and command. The lock is an ``flock`` on a
file named after the folder's absolute path, kept in a per-user folder of the system's temporary directory rather
than in the output folder: a bad invocation changes nothing on disk (the fuzz suite checks that), and a folder that
does not exist yet has a lock as well. The kernel releases an ``flock`` on any exit, a SIGKILL included, so the lock
of a dead process is free: the next run takes it over (the file's stale text is rewritten).

Under torchrun only process 0 takes the lock (the others write only what process 0 orders them to); the group stops
when process 0 is refused.
"""
import contextlib
import datetime
import fcntl
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator, Optional


class FolderInUse(FileExistsError):
    """Another capxai run holds the output folder."""


def lock_file_of(folder) -> Path:
    """Where the lock of ``folder`` lives: ``$TMPDIR/capxai-locks-UID/<sha256 of its absolute path>.lock``."""
    absolute = os.path.realpath(os.path.abspath(folder))
    name = hashlib.sha256(absolute.encode()).hexdigest()[:32]
    return Path(tempfile.gettempdir()) / f"capxai-locks-{os.getuid()}" / f"{name}.lock"


def _is_first_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


@contextlib.contextmanager
def folder_lock(folder, command: str) -> Iterator[Optional[Path]]:
    """Holds the lock of ``folder`` for ``command`` (e.g. ``"train"``) while the block runs; raises
    :class:`FolderInUse` at once (no waiting) when another live process holds it. ``None`` takes no lock; neither
    does a torchrun process other than process 0."""
    if folder is None or not _is_first_process():
        yield None
        return
    path = lock_file_of(folder)
    path.parent.mkdir(mode=0o700, exist_ok=True)
    handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FolderInUse(_in_use_message(folder, path)) from None
        holder = {"pid": os.getpid(), "command": command, "folder": os.path.abspath(folder),
                  "started": datetime.datetime.now().isoformat(timespec="seconds")}
        os.ftruncate(handle, 0)
        os.pwrite(handle, json.dumps(holder).encode(), 0)
        yield path
    finally:
        os.close(handle)  # releases the lock (so does any exit of the process)


def _in_use_message(folder, path: Path) -> str:
    try:
        holder = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        holder = {}
    who = (f"pid {holder['pid']}: capxai {holder.get('command', '?')}, started {holder.get('started', '?')}"
           if "pid" in holder else "a process that is starting")
    return (f"{folder} is in use by another capxai run ({who}); wait for it to finish or choose another --out "
            "(two runs into one folder would mix their files)")
