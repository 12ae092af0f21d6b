"""Reading ``.npy`` / ``.npz`` files safely: never unpickling, and checking each array's header
against the bytes stored before numpy allocates anything (a 200-byte file may claim terabytes).

Light on purpose (NumPy only): `envs` reads episode files through it without importing torch.
"""

from __future__ import annotations

import math
import zipfile
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

READ_ERRORS = (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, zlib.error)
"""What reading a corrupt ``.npy`` / ``.npz`` may raise."""


def check_npy_header(handle: BinaryIO, stored: int, where: str) -> None:
    """ValueError naming `where` when the ``.npy`` header read from `handle` claims more data
    than the `stored` bytes that follow it (a truncated or crafted file: a 200-byte file may
    claim terabytes, which numpy would try to allocate before reading)."""
    try:
        version = np.lib.format.read_magic(handle)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) \
            else np.lib.format.read_array_header_2_0  # 3.0 differs only in the header's encoding
        shape, _, dtype = read_header(handle)
    except READ_ERRORS as err:
        raise ValueError(f"{where}: not a readable .npy header ({err})") from err
    claimed = math.prod(shape) * dtype.itemsize
    available = stored - handle.tell()
    if claimed > available:
        raise ValueError(f"{where}: its header claims an array of shape {shape} {dtype} ({claimed:,} bytes) "
                         f"but the file holds {max(available, 0):,}: truncated or not a valid .npy file")


def open_npz(path: Path, kind: str = ".npz file") -> np.lib.npyio.NpzFile:
    """Open an ``.npz`` archive without unpickling; ValueError naming the file (and `kind`)
    when it is unreadable or holds a single ``.npy`` array."""
    try:
        archive = np.load(path, allow_pickle=False)
    except READ_ERRORS as err:
        raise ValueError(f"{path}: not a readable {kind} ({err})") from err
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"{path}: not an .npz archive (holds a single .npy array)")
    try:  # each member's header against its stored size, before anything is allocated
        for info in archive.zip.infolist():
            if info.filename.endswith(".npy"):
                with archive.zip.open(info) as member:
                    check_npy_header(member, info.file_size, f"{path} (array {info.filename[:-4]!r})")
    except READ_ERRORS as err:
        archive.close()
        if isinstance(err, ValueError) and str(err).startswith(str(path)):
            raise
        raise ValueError(f"{path}: not a readable {kind} ({err})") from err
    return archive


__all__ = ["READ_ERRORS", "check_npy_header", "open_npz"]
