"""The project folder of a Session: its state file, its data generations and its lock.

A project folder holds

    session.json          the state: sources, settings, runs, and which data folder is current
    data/loaded-000007/   the loaded rows of generation 7 (a `datasets` folder)
    data/cleaned-000009/  the cleaned rows, data/tokens-000011/ the token ids, data/tokenizer-000011/
    runs/<run id>/        one folder per training run (run.json, metrics.jsonl, checkpoints/)
    .nbtune.lock          who has the project open for writing (pid, host, since)

**Saves are transactions.** A save writes every changed data folder under a
new name that no state refers to yet (fsynced, files and folders), and only
then replaces session.json (written to a temporary file, fsynced, renamed,
folder fsynced): that rename is the commit. Folders the new state no longer
names are removed after it. A process killed at any moment therefore leaves
either the old state with its old folders or the new state with its new
folders, never a mix; `recover()` on open removes what a killed save left
behind.

**One writer.** A process that opens a project for writing holds an exclusive
`flock` on `.nbtune.lock` for as long as a Session object of it is open; the
kernel drops it when the process dies, even by kill -9, so a lock left by a
dead process is taken over without a question. A second process gets
`ProjectLockedError` naming the holder (or opens the project read-only).
Inside one process several Session objects may share the folder; each save
checks that session.json is still the one this object read or wrote last
(`generation` and `lineage`), so an out-of-date object can never overwrite
what a newer one saved (`StaleSessionError`).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shutil
import signal
import socket
import sys
import threading
import uuid
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nbtune.errors import DataError, StageOrderError
from nbtune.storage import atomic_write_json, fsync_dir, fsync_tree, now

STATE_FILE = "session.json"
LOCK_FILE = ".nbtune.lock"
DATA_DIR = "data"
BACKUPS_DIR = "backups"
ITEMS = ("loaded", "cleaned", "tokenizer", "tokens")
# what a project folder of nbtune's holds besides user files: moved as a whole by `fresh=True`
OWNED = (STATE_FILE, DATA_DIR, "tokenizer", "runs", "lab")
_LEGACY = {"loaded": "data/loaded", "cleaned": "data/cleaned", "tokens": "data/tokens", "tokenizer": "tokenizer"}
_OURS_IN_DATA = re.compile(r"^(?:(?:loaded|cleaned|tokens|tokenizer)(?:-\d+)?|\..+\.(?:tmp|old))$")


class ProjectLockedError(StageOrderError):
    """Another process has this project open for writing."""


class StaleSessionError(StageOrderError):
    """This Session object is older than what is saved in its folder; it may not overwrite it."""


def _crash_point(name: str) -> None:
    """Fault injection for the crash tests: kill this process (SIGKILL) when NBTUNE_CRASH_AT names this point."""
    if os.environ.get("NBTUNE_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


# ---------------------------------------------------------------------------- the lock


def describe_holder(info: dict[str, Any]) -> str:
    """'process 1234 on host "lab-3" (python train.py, since 2026-11-30T10:00:00)'."""
    if not info:
        return "another process (it did not say which)"
    program = f"{info.get('program')}, " if info.get("program") else ""
    return f"process {info.get('pid')} on host {info.get('host')!r} ({program}since {info.get('since')})"


class FileLock:
    """An exclusive, non-blocking lock on a file, released by the kernel when its process dies.

    `flock` where the platform has it (Linux, macOS; NFSv4 maps it to a lease);
    elsewhere an O_EXCL lock file whose holder is alive while its pid runs on
    this host. The file holds who took the lock, for error messages.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> dict[str, Any] | None:
        """Take the lock; returns None, or the holder's info when someone else holds it."""
        if self._fd is not None:
            return None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            return self._acquire_exclusive_file()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return self.holder() or {"pid": "?", "host": "?"}
        self._fd = fd
        self._write_info(fd)
        return None

    def _acquire_exclusive_file(self) -> dict[str, Any] | None:  # pragma: no cover - Windows
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = self.holder()
                if holder and not _dead_here(holder):
                    return holder
                self.path.unlink(missing_ok=True)  # left by a process that is gone
                continue
            self._fd = fd
            self._write_info(fd)
            return None
        return self.holder()

    def _write_info(self, fd: int) -> None:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": now(),
                "program": " ".join(Path(a).name if i == 0 else a for i, a in enumerate(sys.argv[:3])) or "python"}
        data = json.dumps(info).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        os.fsync(fd)

    def holder(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text(encoding="utf-8") or "{}")
        except (OSError, json.JSONDecodeError):
            return {}

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if not _has_flock():  # pragma: no cover - Windows
                self.path.unlink(missing_ok=True)
        finally:
            os.close(fd)  # closing the descriptor drops the flock


def _has_flock() -> bool:
    try:
        import fcntl  # noqa: F401
    except ImportError:  # pragma: no cover
        return False
    return True


def _dead_here(info: dict[str, Any]) -> bool:  # pragma: no cover - Windows path
    if info.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(info["pid"]), 0)
    except (OSError, ValueError, KeyError):
        return True
    return False


class _Holding:
    """This process's hold on one project folder: the lock, and the lock that serialises its saves."""

    def __init__(self, lock: FileLock) -> None:
        self.lock = lock
        self.save_lock = threading.RLock()
        self.users: weakref.WeakSet = weakref.WeakSet()


_holdings: dict[Path, _Holding] = {}
_holdings_lock = threading.Lock()


def hold(workdir: Path, user: Any) -> _Holding:
    """Take (or share, inside this process) the project lock of `workdir` for `user` (a Session)."""
    with _holdings_lock:
        holding = _holdings.get(workdir)
        if holding is None:
            lock = FileLock(workdir / LOCK_FILE)
            holder = lock.acquire()
            if holder is not None:
                raise ProjectLockedError(
                    f"{workdir} is open for writing in {describe_holder(holder)}; two writers would overwrite each "
                    "other's saves. Nothing was read or changed. What to do: finish there (s.close(), or shut that "
                    "kernel down), or open it here read-only: nbtune.Session(folder, read_only=True)")
            holding = _Holding(lock)
            _holdings[workdir] = holding
        holding.users.add(user)
        weakref.finalize(user, _release_if_unused, workdir)  # a Session dropped without close() lets go too
        return holding


def _release_if_unused(workdir: Path, user: Any = None) -> None:
    """Drop `user` (if given); the lock goes when no Session of this process uses the folder any more."""
    with _holdings_lock:
        holding = _holdings.get(workdir)
        if holding is None:
            return
        if user is not None:
            holding.users.discard(user)
        if not any(True for _ in holding.users):  # iterating skips a Session being garbage-collected
            holding.lock.release()
            del _holdings[workdir]


def let_go(workdir: Path, user: Any) -> None:
    """`user` closes the project; the lock goes when no Session of this process uses the folder any more."""
    _release_if_unused(workdir, user)


def live_sessions(workdir: Path) -> list[Any]:
    """The open Session objects of this process on `workdir`."""
    with _holdings_lock:
        holding = _holdings.get(workdir)
        return list(holding.users) if holding is not None else []


def open_sessions() -> list[Any]:
    """Every open (writable) Session object of this process, whatever its folder."""
    with _holdings_lock:
        return [user for holding in _holdings.values() for user in holding.users]


# ---------------------------------------------------------------------------- the store


class Store:
    """Reads and commits one project folder's state and data (see the module docstring)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.state_path = self.workdir / STATE_FILE
        self.lineage: str | None = None  # which session.json history this object follows
        self.generation = 0  # the generation of session.json this object read or wrote last
        self.paths: dict[str, str] = {}  # item -> folder (relative to the workdir) of the current generation

    # ------------------------------------------------------------ reading
    def exists(self) -> bool:
        return self.state_path.exists()

    def read_state(self) -> dict[str, Any]:
        """session.json, parsed; a DataError with line and column when it is not valid JSON."""
        try:
            state = json.loads(self.state_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataError(f"the session file is not valid JSON: {exc.msg}", path=self.state_path, line=exc.lineno,
                            column=exc.colno, fix="restore it from a backup (nbtune writes it atomically, so this "
                            "usually means it was edited by hand), or start over with nbtune.Session(folder, "
                            "fresh=True), which moves the old state into backups/ and deletes nothing") from None
        if not isinstance(state, dict):
            raise DataError("the session file does not hold a JSON object", path=self.state_path,
                            fix="restore it from a backup, or start over with nbtune.Session(folder, fresh=True)")
        return state

    def adopt(self, state: dict[str, Any]) -> None:
        """Follow the state just read: its generation, lineage and data folders."""
        self.lineage = state.get("lineage")
        self.generation = int(state.get("generation", 0))
        data = state.get("data")
        if data is None:  # written by nbtune before generations: the fixed folders of that layout
            data = {name: path for name, path in _LEGACY.items() if self._legacy_folder(path).exists()}
        self.paths = {name: str(path) for name, path in data.items() if name in ITEMS and path}

    def _legacy_folder(self, rel: str) -> Path:
        """A folder of the old layout; put back from `.<name>.old` when a save was killed between its two renames."""
        folder = self.workdir / rel
        old = folder.with_name(f".{folder.name}.old")
        if not folder.exists() and old.is_dir():
            os.replace(old, folder)
        return folder

    def path(self, name: str) -> Path | None:
        """The folder of data item `name` in the current generation, or None."""
        rel = self.paths.get(name)
        return self.workdir / rel if rel else None

    # ------------------------------------------------------------ committing
    def check_current(self) -> None:
        """Refuse to write when session.json moved on since this object last read or wrote it."""
        if not self.state_path.exists():
            if self.lineage is not None:
                raise StaleSessionError(
                    f"{self.state_path} is gone (the project was moved or started over since this Session object "
                    "opened it); nothing was written. What to do: open the folder again: s = nbtune.Session(folder)")
            return
        try:
            on_disk = json.loads(self.state_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            on_disk = {}
        if (on_disk.get("lineage"), int(on_disk.get("generation", 0) or 0)) != (self.lineage, self.generation):
            by = on_disk.get("writer") or {}
            who = ("another Session object in this kernel" if by.get("pid") == os.getpid()
                   else describe_holder(by))
            raise StaleSessionError(
                f"this Session object is out of date: {self.workdir} was saved by {who} at {on_disk.get('saved')} "
                "after this object last read it, and writing now would undo that. Nothing was written. What to do: "
                "use the newer Session object, or open the folder again: s = nbtune.Session(folder)")

    def commit(self, state: dict[str, Any], writes: dict[str, Callable[[Path], None] | None]) -> Path:
        """Write the changed data items (`writes`: name -> builder, or None to drop it), then the state.

        Call with the project's save lock held. Returns the state file.
        """
        self.check_current()
        generation = self.generation + 1
        lineage = self.lineage or uuid.uuid4().hex
        new_paths = dict(self.paths)
        data_dir = self.workdir / DATA_DIR
        written: list[str] = []
        try:
            for name, build in writes.items():
                if build is None:
                    new_paths.pop(name, None)
                    continue
                new_paths[name] = self._write_item(data_dir, name, generation, build)
                written.append(new_paths[name])
            state = {**state, "lineage": lineage, "generation": generation, "data": new_paths,
                     "writer": {"pid": os.getpid(), "host": socket.gethostname()}}
            _crash_point("before-state")
            atomic_write_json(self.state_path, state)
        except BaseException:  # not committed: the old state and its folders stand; drop what this save wrote
            for rel in written:
                shutil.rmtree(self.workdir / rel, ignore_errors=True)
            raise
        _crash_point("after-state")
        old_paths = self.paths
        self.lineage, self.generation, self.paths = lineage, generation, new_paths
        for name, rel in old_paths.items():
            if new_paths.get(name) != rel:
                shutil.rmtree(self.workdir / rel, ignore_errors=True)
                _crash_point(f"after-remove:{name}")
        return self.state_path

    def _write_item(self, data_dir: Path, name: str, generation: int, build: Callable[[Path], None]) -> str:
        """Build one data folder under a temporary name, fsync it, and give it its generation's name."""
        data_dir.mkdir(parents=True, exist_ok=True)
        tmp = data_dir / f".{name}-{uuid.uuid4().hex[:8]}.tmp"
        final = data_dir / f"{name}-{generation:06d}"
        try:
            tmp.mkdir()
            build(tmp)
            fsync_tree(tmp)
            _crash_point(f"after-write:{name}")
            if final.exists():  # left by a killed save of this generation: no state refers to it
                shutil.rmtree(final)
            os.replace(tmp, final)
            fsync_dir(data_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _crash_point(f"after-rename:{name}")
        return f"{DATA_DIR}/{final.name}"

    # ------------------------------------------------------------ recovery and starting over
    def recover(self) -> list[str]:
        """Remove what a killed save left in data/ (temporary folders, generations no state names)."""
        data_dir = self.workdir / DATA_DIR
        if not data_dir.is_dir():
            return []
        referenced = {Path(rel).name for rel in self.paths.values() if rel.startswith(f"{DATA_DIR}/")}
        removed = []
        for entry in sorted(data_dir.iterdir()):
            if entry.name in referenced or not _OURS_IN_DATA.match(entry.name) or entry.is_symlink():
                continue
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
            removed.append(f"{DATA_DIR}/{entry.name}")
        return removed

    def move_to_backup(self) -> Path | None:
        """Move every part of the saved state into backups/<date>/ (nothing is deleted); returns that folder."""
        present = [name for name in OWNED if (self.workdir / name).exists()]
        if not present:
            return None
        stamp = _dt.datetime.now().strftime("%Y-%m-%dT%H-%M-%S")
        target = self.workdir / BACKUPS_DIR / stamp
        suffix = 1
        while target.exists():
            suffix += 1
            target = self.workdir / BACKUPS_DIR / f"{stamp}-{suffix}"
        target.mkdir(parents=True)
        for name in present:
            os.replace(self.workdir / name, target / name)
        fsync_dir(self.workdir)
        self.lineage, self.generation, self.paths = None, 0, {}
        return target


def read_dataset(folder: Path) -> Any:
    """`datasets.load_from_disk`, except that an empty split (which `save_to_disk` writes with no data file,
    and `load_from_disk` then cannot read) comes back as an empty dataset with its saved columns."""
    import datasets

    folder = Path(folder)
    if (folder / "dataset_dict.json").is_file():
        names = json.loads((folder / "dataset_dict.json").read_text(encoding="utf-8"))["splits"]
        return datasets.DatasetDict({name: read_dataset(folder / name) for name in names})
    state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    if not state.get("_data_files"):
        info = json.loads((folder / "dataset_info.json").read_text(encoding="utf-8"))
        features = datasets.Features.from_dict(info["features"])
        return datasets.Dataset.from_dict({name: [] for name in features}, features=features)
    return datasets.load_from_disk(str(folder))
