"""Atomic file writes: write to a temporary name in the target's folder, then rename.

Temporaries are hidden (`.{name}.XXXX.tmp…`) next to their target. A process killed mid-write
leaves one behind; `remove_stale_temporaries` clears them when a run starts. An OSError raised
while writing names the target file (a full disk's ENOSPC carries no file name of its own).
"""

from __future__ import annotations

import contextlib
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
    try:
        with naming(path, tmp):
            write(tmp)
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


__all__ = ["one_line", "atomic_write", "atomic_write_text", "atomic_directory", "naming", "is_temporary",
           "remove_stale_temporaries"]
