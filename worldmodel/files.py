"""Atomic file writes: write to a temporary name in the target's folder, then rename.

Temporaries are hidden (`.{name}.XXXX.tmp…`) next to their target; the result gets the
permissions of a plain `open()` under the umask (0644 / 0755 with umask 022), not tempfile's
private 0600 / 0700. A process killed mid-write leaves one behind;
`remove_stale_temporaries` clears them when a run starts. An OSError raised while writing
names the target file (a full disk's ENOSPC carries no file name of its own).

`FolderLock` keeps a second process from writing into a folder (a run, a recording) that
one is already writing to; the kernel drops it when its holder dies, even by SIGKILL.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


def one_line(problem: object) -> str:
    """An error message (or exception) on one line; an exception without one gives its type."""
    text = " ".join(str(problem).split())
    if not text and isinstance(problem, BaseException):
        return type(problem).__name__
    return text


@contextlib.contextmanager
def naming(path: str | os.PathLike[str], *unhelpful: str) -> Iterator[None]:
    """Re-raise an OSError that names no file (or one of `unhelpful`) as naming `path`."""
    try:
        yield
    except OSError as exc:
        if exc.errno is None or (exc.filename is not None and os.fspath(exc.filename) not in unhelpful):
            raise
        # OSError(errno, ...) builds the matching subclass (PermissionError, ...)
        raise OSError(exc.errno, exc.strerror or os.strerror(exc.errno), os.fspath(path)) from exc


_OS_ERROR_NUMBER = re.compile(r"os error (\d+)")


def as_os_error(exc: BaseException, path: str | os.PathLike[str]) -> OSError | None:
    """The OSError (naming `path`) behind a writer's error of another type, or None.

    Writers report a failed write in their own ways: safetensors raises `SafetensorError(...
    No space left on device (os error 28))`, torch's zip writer a RuntimeError ("unexpected
    pos ...") whose context is the OSError of the file object it wrote to, or nothing of the
    cause at all. Found in that order: an OSError in the chain of causes, an "os error N" in
    the message, or a folder without a byte free (a full disk).
    """
    seen: BaseException | None = exc
    for _ in range(16):  # a chain of causes and contexts, bounded
        if seen is None:
            break
        if isinstance(seen, OSError) and seen.errno is not None:
            return OSError(seen.errno, seen.strerror or os.strerror(seen.errno), os.fspath(path))
        seen = seen.__cause__ or seen.__context__
    found = _OS_ERROR_NUMBER.search(str(exc)[:2000])
    if found:
        number = int(found.group(1))
        return OSError(number, os.strerror(number), os.fspath(path))
    try:
        free = shutil.disk_usage(Path(path).parent).free
    except OSError:
        return None
    if free == 0:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(path))
    return None


@contextlib.contextmanager
def disk_errors(path: str | os.PathLike[str]) -> Iterator[None]:
    """Re-raise a writer's error that hides an OSError (a full disk) as that OSError naming `path`."""
    try:
        yield
    except OSError:
        raise
    except Exception as exc:
        mapped = as_os_error(exc, path)
        if mapped is None:
            raise
        raise mapped from exc


def current_umask() -> int:
    """The process's umask, read without changing it where Linux shows it (/proc/self/status)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (not thread-safe, but only on odd systems)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike[str], write: Callable[[str], None]) -> Path:
    """Call `write(tmp_path)` then atomically rename tmp_path to `path`; returns `path`.

    The temporary file lives in the same folder (so the rename is atomic) and starts with
    a dot; it is removed if `write` fails.
    """
    path = Path(path)
    with naming(path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)
        # keep the extension: writers that pick a format from it (OpenCV, Pillow) need it
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    mode = 0o666 & ~current_umask()
    os.chmod(tmp, mode)  # mkstemp's 0600 would hide the file from the group
    try:
        with naming(path, tmp), disk_errors(path):
            write(tmp)
            # again: a writer that replaces the file (safetensors' save_file) makes a new 0600 one
            os.chmod(tmp, mode)
            os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def atomic_directory(path: str | os.PathLike[str], fill: Callable[[Path], None]) -> Path:
    """Create directory `path` atomically: `fill(tmp_dir)` then rename tmp_dir to `path`."""
    path = Path(path)
    with naming(path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp's 0700, likewise
    try:
        with naming(path, str(tmp)):
            fill(tmp)
            if path.exists():
                shutil.rmtree(path)
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


# `.{stem}.XXXXXXXX.tmp{suffix}` (atomic_write) or `.{name}.XXXXXXXX.tmp` (atomic_directory),
# XXXXXXXX being tempfile's 8 random characters
_TEMPORARY = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp(\.[^.]+)?$")


def is_temporary(path: Path) -> bool:
    """Whether `path` is named like a temporary of `atomic_write` or `atomic_directory`."""
    return _TEMPORARY.match(path.name) is not None


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporaries that killed writes left in `folder` (not recursive).

    Call it only when nothing is writing to `folder` (e.g. as a run starts). Returns what
    was removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for entry in sorted(folder.iterdir()):
        if not is_temporary(entry):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def check_output_folder(path: str | os.PathLike[str]) -> Path:
    """`path` as a Path, unless it exists and is not a folder: then the ValueError every command
    gives for an `--out` that names a file (`dlh train`, `eval`, `rollout`, `analyze`, `record`)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"output folder {path} is a file, not a folder: choose another --out "
                         "(a folder, created if missing)")
    return path


class FolderInUse(OSError):
    """Another process holds the `FolderLock` of a folder; the message names its PID."""

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"


class FolderLock:
    """An exclusive lock on `folder` (its hidden file `.lock`), for one writing process.

    The lock is `flock` on an open file: the kernel releases it when the holder exits in any
    way (SIGKILL included), so a killed run never leaves a folder locked. The holder's PID
    is written into the file for the message another process gets. Within one process the
    lock is shared (taking it again only counts), so that a program may hold several
    writers of one folder (a trainer and its caller). Without `fcntl` (Windows) it does
    nothing.

    Raises (from `acquire`):
        FolderInUse: another process holds the lock (message: the folder, the PID, `what`).
    """

    NAME = ".lock"
    _held: dict[str, list] = {}  # real path -> [fd, count] of the locks this process holds

    def __init__(self, folder: str | os.PathLike[str], what: str = "writing to it") -> None:
        self.folder = Path(folder)
        self.what = what
        self._key: str | None = None

    def acquire(self) -> FolderLock:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return self
        if self._key is not None:
            return self
        with naming(self.folder):
            self.folder.mkdir(parents=True, exist_ok=True)
        key = os.path.realpath(self.folder)
        held = FolderLock._held.get(key)
        if held is not None:
            held[1] += 1
            self._key = key
            return self
        path = self.folder / self.NAME
        with naming(path):
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise OSError(exc.errno, exc.strerror, str(path)) from exc
            raise FolderInUse(
                errno.EBUSY,
                f"in use by another process (PID {holder}) {self.what}; wait for it to end or "
                f"stop it (kill {holder}), or choose another folder",
                str(self.folder),
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        FolderLock._held[key] = [fd, 1]
        self._key = key
        return self

    def release(self) -> None:
        if self._key is None:
            return
        held = FolderLock._held[self._key]
        held[1] -= 1
        if held[1] == 0:
            os.close(held[0])  # closing the file releases the flock
            del FolderLock._held[self._key]
        self._key = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


__all__ = ["one_line", "atomic_write", "as_os_error", "disk_errors", "atomic_write_text", "atomic_directory",
           "naming", "is_temporary",
           "remove_stale_temporaries", "current_umask", "FolderLock", "FolderInUse", "check_output_folder"]
