"""Reading video files: ``.npy``, ``.npz``, ``.mp4``, ``.avi`` -> uint8 (T, H, W, C).

``.npy`` / ``.npz`` are loaded with ``allow_pickle=False`` (a user's file is never
unpickled); ``.npz`` holds the video under the key ``video`` (or ``image``), or as its
only array. ``.mp4`` / ``.avi`` are decoded with OpenCV and returned as RGB. A file
that cannot be read raises ``ValueError`` naming it.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import cv2
import numpy as np

from worldmodel.npz import READ_ERRORS, check_npy_header, open_npz

T = TypeVar("T")
VIDEO_SUFFIXES = (".npy", ".npz", ".mp4", ".avi")
NPZ_KEYS = ("video", "image")


def _cv2_open(path: Path) -> cv2.VideoCapture:
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        capture.release()
        raise ValueError(f"{path}: OpenCV cannot open this video (corrupt or unsupported codec)")
    return capture


def _cv2_frame(frame: np.ndarray) -> np.ndarray:
    """A decoded OpenCV frame -> (H, W, C) RGB or (H, W, 1) gray."""
    if frame.ndim == 2:
        return frame[..., None]
    return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)


def read_cv2_video(path: str | Path, start: int = 0, length: int | None = None) -> np.ndarray:
    """Decode frames [start, start + length) (all if length is None): (T, H, W, C) uint8 RGB."""
    path = Path(path)
    capture = _cv2_open(path)
    frames: list[np.ndarray] = []
    try:
        for _ in range(start):
            if not capture.grab():
                break
        while length is None or len(frames) < length:
            ok, frame = capture.read()
            if not ok or frame is None:
                break
            frames.append(_cv2_frame(frame))
    finally:
        capture.release()
    if not frames or (length is not None and len(frames) < length):
        raise ValueError(
            f"{path}: decoded {len(frames)} frame(s) from frame {start}"
            + (f", needed {length}" if length is not None else "")
            + " (corrupt, truncated or unsupported video)"
        )
    return np.stack(frames)


def _npz_key(path: Path, names: list[str]) -> str:
    names = [n[:-4] if n.endswith(".npy") else n for n in names]
    for key in NPZ_KEYS:
        if key in names:
            return key
    if len(names) == 1:
        return names[0]
    raise ValueError(f"{path}: .npz must hold an array named 'video' or 'image' (or exactly one "
                     f"array), found {sorted(names)}")


def read_npz_video(path: str | Path) -> np.ndarray:
    """The video array of an ``.npz`` file (key ``video``, ``image``, or its only array)."""
    path = Path(path)
    with open_npz(path) as archive:
        key = _npz_key(path, list(archive.files))
        try:
            return np.asarray(archive[key])
        except READ_ERRORS as err:
            raise ValueError(f"{path}: cannot read array {key!r} ({err})") from err


def read_npy_video(path: str | Path, mmap: bool = False) -> np.ndarray:
    """The array of an ``.npy`` file (memory-mapped if ``mmap``); its header is checked against
    the file's size first."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            check_npy_header(handle, os.fstat(handle.fileno()).st_size, str(path))
        array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except READ_ERRORS as err:
        raise ValueError(f"{path}: not a readable .npy file ({err})") from err
    if not isinstance(array, np.ndarray):
        array.close()
        raise ValueError(f"{path}: not an .npy array (an .npz archive?)")
    return array


def read_video(path: str | Path) -> np.ndarray:
    """A whole video file as an array (uint8 expected; checked by the caller)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return read_npy_video(path)
    if suffix == ".npz":
        return read_npz_video(path)
    if suffix in (".mp4", ".avi"):
        return read_cv2_video(path)
    raise ValueError(f"{path}: unsupported video file type {suffix!r}; expected one of "
                     f"{', '.join(VIDEO_SUFFIXES)}")


def video_length(path: str | Path) -> int:
    """Number of frames, read from the file's header (no full decode)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        shape = read_npy_video(path, mmap=True).shape
    elif suffix == ".npz":
        try:
            archive = zipfile.ZipFile(path)
        except READ_ERRORS as err:
            raise ValueError(f"{path}: not a readable .npz file ({err})") from err
        with archive:
            key = _npz_key(path, archive.namelist())
            try:
                with archive.open(f"{key}.npy") as member:
                    version = np.lib.format.read_magic(member)
                    if version == (1, 0):
                        shape = np.lib.format.read_array_header_1_0(member)[0]
                    else:
                        shape = np.lib.format.read_array_header_2_0(member)[0]
            except READ_ERRORS as err:
                raise ValueError(f"{path}: cannot read array {key!r} ({err})") from err
    elif suffix in (".mp4", ".avi"):
        capture = _cv2_open(path)
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        capture.release()
        if count <= 0:
            raise ValueError(f"{path}: OpenCV reports no frames (corrupt or unsupported video)")
        return count
    else:
        raise ValueError(f"{path}: unsupported video file type {suffix!r}")
    if len(shape) not in (3, 4) or shape[0] == 0:
        raise ValueError(f"{path}: expected a video (T, H, W[, C]), got shape {tuple(shape)}")
    return int(shape[0])


def read_video_window(path: str | Path, start: int, length: int) -> np.ndarray:
    """Frames [start, start + length) of a video file, as stored (not resized)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".mp4", ".avi"):
        return read_cv2_video(path, start, length)
    array = read_npy_video(path, mmap=True) if suffix == ".npy" else read_video(path)
    window = np.asarray(array[start:start + length])
    if len(window) < length:
        raise ValueError(f"{path}: has {len(array)} frames, needed frames {start}..{start + length}")
    return window


def read_many(function: Callable[[Path], T], files: Sequence[Path], workers: int = 4) -> list[T]:
    """``[function(f) for f in files]`` on a few threads (decoding releases the GIL)."""
    workers = max(1, min(workers, os.cpu_count() or 1, len(files)))
    if workers == 1:
        return [function(f) for f in files]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(function, files))
