"""Output folders and what capxai wrote into them.

Every command writes into its own folder, and records each file it wrote in ``.capxai-manifest.json`` there: the
command, the result group (e.g. ``test_beam3`` of ``evaluate``, ``lrp`` of ``explain``) and the run id. From that:

- ``--overwrite`` replaces only files capxai wrote; a file it did not write is never replaced or deleted (the
  command stops and names it);
- replacing a group first removes every file of that group's earlier run, so that results of two runs are never
  left side by side (an old ``hallucination_*.json`` beside new metrics);
- a folder that holds files capxai did not write is never emptied;
- each recorded file's size and sha256 are kept too: a file the user changed after capxai wrote it is not replaced
  (nor removed) unless asked twice (``--overwrite --overwrite``, or ``--force``): ``overwrite`` is a level, 0 (keep),
  1 (replace what capxai wrote, as it wrote it), 2 (replace it even when changed).

The manifest is updated under an exclusive lock (several ``torchrun`` processes write into one folder).
"""
import contextlib
import datetime
import fcntl
import json
import os
import secrets
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional

from capxai._io import atomic_write_json, file_sha256

MANIFEST = ".capxai-manifest.json"
_LOCK = ".capxai-manifest.lock"
_FORMAT, _VERSION = "capxai-manifest", 1
_OWN_FILES = (MANIFEST, _LOCK)


def new_run_id() -> str:
    """A run id: UTC time and 8 random hex digits, e.g. ``20261126T101500Z-1a2b3c4d``."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(4)


class OutputFolder:
    """One output folder of one command.

    Args:
        path: the folder (created on the first write).
        command: the command writing into it, e.g. ``"evaluate"`` (named in the manifest and in errors).
        run_id: this run's id (default: a new one).
    """

    def __init__(self, path, command: str, run_id: Optional[str] = None):
        self.path = Path(path)
        self.command = command
        self.run_id = run_id or new_run_id()
        if self.path.exists() and not self.path.is_dir():
            raise NotADirectoryError(f"output folder {self.path} exists and is not a folder; choose another --out")

    # -- reading ----------------------------------------------------------------------------------------------------
    def entries(self) -> Dict[str, dict]:
        """``{relative path: {"command", "group", "run"}}`` of every file capxai recorded here."""
        manifest = self.path / MANIFEST
        if not manifest.is_file():
            return {}
        try:
            payload = json.loads(manifest.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"manifest {manifest} is not valid json ({error}); capxai cannot tell which files it "
                             "wrote there, so it replaces none: move the folder away or choose another --out") from None
        if not (isinstance(payload, dict) and payload.get("format") == _FORMAT and isinstance(payload.get("files"),
                                                                                                 dict)):
            raise ValueError(f"manifest {manifest} is not a capxai manifest; capxai replaces nothing in "
                             f"{self.path}: move the folder away or choose another --out")
        if payload.get("version") != _VERSION:
            raise ValueError(f"manifest {manifest} has format version {payload.get('version')!r}, this capxai reads "
                             f"{_VERSION}; choose another --out")
        return payload["files"]

    def group_files(self, group: str) -> List[Path]:
        """Files of ``group`` recorded here (by any earlier run of this command)."""
        return [self.path / name for name, entry in self.entries().items()
                if entry.get("group") == group and entry.get("command") == self.command]

    def group_runs(self, group: str) -> set:
        """The run ids of ``group``'s files here (empty when there are none)."""
        return {entry.get("run") for entry in self.entries().values()
                if entry.get("group") == group and entry.get("command") == self.command}

    def foreign_files(self) -> List[Path]:
        """Files under the folder that capxai did not record (its own manifest and lock aside)."""
        if not self.path.is_dir():
            return []
        known = set(self.entries())
        found = []
        for root, _, names in os.walk(self.path):
            for name in names:
                relative = os.path.relpath(os.path.join(root, name), self.path)
                if relative not in known and relative not in _OWN_FILES:
                    found.append(Path(root) / name)
        return sorted(found)

    def changed_files(self, paths: Iterable) -> List[Path]:
        """Of ``paths``, the recorded files whose bytes are no longer what capxai wrote (edited since); files
        recorded without a fingerprint (by an older capxai) count as unchanged."""
        known = self.entries()
        changed = []
        for path in map(Path, paths):
            entry = known.get(os.path.relpath(path, self.path), {})
            if "sha256" in entry and path.is_file() and (path.stat().st_size != entry.get("size")
                                                         or file_sha256(path) != entry["sha256"]):
                changed.append(path)
        return changed

    def _refuse_changed(self, paths: Iterable, overwrite: int) -> None:
        if overwrite >= 2:
            return
        changed = self.changed_files(paths)
        if changed:
            more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
            raise FileExistsError(f"{changed[0]}{more} was changed after capxai {self.command} wrote it; capxai does "
                                  "not replace a file you edited: move it away, or pass --overwrite twice (or "
                                  "--force) to replace it anyway")

    # -- checking before any work -----------------------------------------------------------------------------------
    def check_writable(self, targets: Iterable, overwrite: int, group: Optional[str] = None) -> None:
        """Refuses, before any work, to write ``targets`` (paths in this folder) when one exists and was not
        written by capxai (never replaced), or exists and ``overwrite`` is 0 (False), or was changed since capxai
        wrote it and ``overwrite`` is below 2. With ``group``, any file of that group's earlier run counts as
        existing too (it would be replaced)."""
        known = self.entries()
        existing = [Path(target) for target in targets if Path(target).exists()]
        for target in existing:
            relative = os.path.relpath(target, self.path)
            if relative not in known or Path(target).is_dir():
                raise FileExistsError(f"{target} exists and was not written by capxai {self.command}; capxai never "
                                      "replaces files it did not write: move it away or choose another --out")
        earlier = list(dict.fromkeys(existing + (self.group_files(group) if group is not None else [])))
        if earlier and not overwrite:
            raise FileExistsError(f"{earlier[0]} exists (an earlier run); pass --overwrite to replace it or choose "
                                  "another --out")
        self._refuse_changed(earlier, overwrite)

    def check_replaceable(self, overwrite: int = 1) -> None:
        """Refuses when the folder holds anything capxai did not write, or (``overwrite`` below 2) a file changed
        since capxai wrote it (before replacing the folder as a whole)."""
        self._refuse_changed([self.path / name for name in self.entries()], overwrite)
        foreign = self.foreign_files()
        if foreign:
            more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
            raise FileExistsError(f"{self.path} holds {foreign[0]}{more}, which capxai did not write; --overwrite "
                                  "replaces only what capxai wrote: move them away or choose another --out")

    # -- writing ----------------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / _LOCK, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _update(self, change) -> None:
        with self._locked():
            files = self.entries()
            change(files)
            atomic_write_json(self.path / MANIFEST, {"format": _FORMAT, "version": _VERSION, "files": files})

    def record(self, paths: Iterable, group: str, run_id: Optional[str] = None) -> None:
        """Records ``paths`` (written into this folder) as ``group``'s, by this run (or by ``run_id``)."""
        entry = {"command": self.command, "group": group, "run": run_id or self.run_id}
        # the fingerprint of what was written: a later --overwrite tells a file the user edited from it
        recorded = {os.path.relpath(Path(path), self.path): {**entry, "size": Path(path).stat().st_size,
                                                              "sha256": file_sha256(path)} for path in paths}

        def add(files):
            files.update(recorded)

        self._update(add)

    def remove_group(self, group: str, keep: Iterable = ()) -> List[Path]:
        """Deletes every recorded file of ``group`` (an earlier run's) but those in ``keep`` (just replaced by this
        run), and folders that become empty."""
        removed = []
        kept = {os.path.relpath(Path(path), self.path) for path in keep}

        def drop(files):
            for relative in [name for name, entry in files.items() if name not in kept
                             and entry.get("group") == group and entry.get("command") == self.command]:
                path = self.path / relative
                if path.is_file() or path.is_symlink():
                    path.unlink()
                    removed.append(path)
                del files[relative]

        self._update(drop)
        for folder in sorted({path.parent for path in removed}, key=lambda p: len(p.parts), reverse=True):
            while folder != self.path and folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
                folder = folder.parent
        return removed

    def remove_recorded(self) -> None:
        """Deletes every file capxai recorded here, then the manifest and the folders left empty; anything else
        stays (and so does the folder that holds it)."""
        for relative in self.entries():
            path = self.path / relative
            if path.is_file() or path.is_symlink():
                path.unlink()
        for name in _OWN_FILES:
            (self.path / name).unlink(missing_ok=True)
        for root, folders, _ in os.walk(self.path, topdown=False):
            for folder in folders:
                with contextlib.suppress(OSError):  # not empty: it holds something capxai did not write
                    (Path(root) / folder).rmdir()


def write_manifest(folder, command: str, group: str, run_id: str) -> None:
    """Records every file under ``folder`` as written by ``command`` (for a folder built whole, e.g. in staging)."""
    output = OutputFolder(folder, command, run_id)
    paths = [Path(root) / name for root, _, names in os.walk(folder) for name in names if name not in _OWN_FILES]
    output.record(paths, group)
