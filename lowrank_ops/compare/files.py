"""The comparison's files in its output folder (--out): atomic writes, the folder lock, and the checks made
before training starts.

- Every file (results.json, checkpoints, the plot) is written to a temporary file with a unique name in the
  same folder, flushed and fsync'ed, then moved over the destination with os.replace (atomic on POSIX and
  Windows), and the folder is fsync'ed: a reader sees the old file or the new one, never a half-written
  one, even when the process is killed or the machine loses power mid-write.
- One run at a time per folder: a run holds an OS lock (fcntl.flock; msvcrt.locking on Windows) on
  <out>/.lock while it reads or writes anything in the folder. A second run on the same folder refuses at
  once with one line (it does not wait: a wait could hang a script for hours behind a long run). The OS
  drops the lock when its process ends, however it ends (Ctrl-C, kill -9, a crash), so a stale lock never
  blocks a later run; the .lock file itself stays in the folder.
- Every problem is an OutputError: one line naming the file and what to do, exit status 1.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
    import msvcrt

LOCK = ".lock"
_TEMP_SUFFIX = ".tmp"
_UMASK = os.umask(0o022)  # read once (os.umask can only be read by setting it); restored at once
os.umask(_UMASK)


class OutputError(Exception):
    """A file or folder of --out that cannot be used: printed as one line, exit status 1."""


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> Path:
    """Writes `path` through `write(file)` so that `path` is always either its old or its new content."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_TEMP_SUFFIX)
    except OSError as exc:
        raise OutputError(f"error: cannot write {path}: {_reason(exc)}") from None
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; written files get the usual permissions
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:  # Ctrl-C included: never leave the temporary file behind
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise OutputError(f"error: cannot write {path}: {_reason(exc)} (the previous file, if any, is "
                              "unchanged)") from None
        raise
    _fsync_folder(path.parent)
    return path


def _fsync_folder(folder: Path) -> None:
    """Makes the rename durable (POSIX); folders cannot be opened for fsync on Windows."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems do not fsync folders; the rename itself is still atomic
    finally:
        os.close(fd)


def remove_stale_temps(folder: Path) -> None:
    """Removes temporary files a killed run left in `folder` (call it while holding the folder's lock)."""
    if folder.is_dir():
        for tmp in folder.glob(f".*{_TEMP_SUFFIX}"):
            with contextlib.suppress(OSError):
                if tmp.is_file():
                    tmp.unlink()


def writable_folder(folder: Path, what: str, fix: str) -> Path:
    """Creates `folder` if needed and checks that files can be created in it (what: how to name it; fix:
    what to do when it is not a folder)."""
    _make_folder(folder, what, fix)
    _probe(folder, what)
    return folder


def _make_folder(folder: Path, what: str, fix: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputError(f"error: {what} {folder} is not a folder; {fix}") from None
    except OSError as exc:
        raise OutputError(f"error: {what} {folder}: {_reason(exc)}") from None


def _probe(folder: Path, what: str) -> None:
    """Creates and removes a file in `folder`: the only sure test of writability (root, ACLs, read-only
    mounts)."""
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".probe.", suffix=_TEMP_SUFFIX)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"error: {what} {folder} is not writable: {_reason(exc)}") from None


def file_slot(path: Path) -> None:
    """Checks that `path` is a regular file or absent, so that it can be replaced atomically."""
    if (path.exists() or path.is_symlink()) and not path.is_file():
        raise OutputError(f"error: {path} is not a file; move it aside or pass another --out")


class FolderLock:
    """`with FolderLock(out):` holds <out>/.lock, creating `out` if needed; raises OutputError when another
    process holds it (no waiting) or the folder cannot be written."""

    def __init__(self, out: Path):
        self.out = out
        self.path = out / LOCK
        self._fd = None

    def __enter__(self) -> "FolderLock":
        _make_folder(self.out, "--out", "pass another --out")
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise OutputError(f"error: cannot create the lock file {self.path}: {_reason(exc)}") from None
        try:
            _lock(fd)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            by = f" (pid {holder})" if holder else ""
            raise OutputError(f"error: --out {self.out} is in use by another run of lowrank_ops.compare{by}; "
                              "wait until it ends or pass another --out") from None
        except OSError as exc:
            os.close(fd)
            raise OutputError(f"error: cannot lock {self.path}: {_reason(exc)}") from None
        self._fd = fd
        try:  # only now, so that a run that is refused writes nothing in the folder
            _probe(self.out, "--out")
            os.ftruncate(fd, 0)  # who holds it, for the message of a run that is refused
            os.write(fd, f"{os.getpid()}\n".encode())
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None


def _lock(fd: int) -> None:
    """Takes the OS lock on `fd` without waiting; BlockingIOError when another process holds it."""
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return
    try:
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except PermissionError:  # msvcrt reports a held lock as EACCES
        raise BlockingIOError from None


def _read_pid(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 32).decode(errors="replace").strip()
    except OSError:
        return ""
    return text if text.isdigit() else ""
