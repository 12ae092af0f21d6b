"""Turning predicted frames into things a person can look at: grids, GIFs, MP4s, plots.

Conventions:

* Model-side frames are float, channels-first and in [0, 1]:
  ``(T, C, H, W)`` or ``(B, T, C, H, W)`` torch tensors or numpy arrays, with
  C = 1 (gray) or 3 (RGB). :func:`to_uint8` converts them.
* Display-side frames are ``uint8`` numpy arrays, channels-last RGB:
  ``(T, H, W, 3)`` for videos, ``(H, W, 3)`` for images.
* Every writer is atomic: it writes a hidden temporary file in the target's
  directory and ``os.replace``-s it into place, so a crash never leaves a
  half-written file under the final name.

Nothing here imports matplotlib at module import; :func:`plot_curves` draws on a
standalone Agg canvas and never touches pyplot's global backend.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch

from .arguments import check_int
from .files import atomic_write

__all__ = [
    "BACKGROUND_COLOUR",
    "CONTEXT_COLOUR",
    "PREDICTION_COLOUR",
    "TRUTH_COLOUR",
    "comparison_grid",
    "image_grid",
    "plot_curves",
    "save_png",
    "to_uint8",
    "upscale_nearest",
    "write_gif",
    "write_mp4",
]

#: RGB colour of the frame drawn around context (observed) frames, t < context.
CONTEXT_COLOUR = (0, 200, 0)
#: RGB colour of the frame drawn around predicted frames, t >= context.
PREDICTION_COLOUR = (220, 0, 0)
#: RGB colour of the frame drawn around ground-truth frames, t >= context.
TRUTH_COLOUR = (128, 128, 128)
#: RGB colour of the gaps between tiles and of empty grid cells.
BACKGROUND_COLOUR = (255, 255, 255)

ArrayLike = torch.Tensor | np.ndarray


# --------------------------------------------------------------------------------------
# Conversion
# --------------------------------------------------------------------------------------


def to_uint8(video: ArrayLike) -> np.ndarray:
    """Convert float channels-first frames in [0, 1] to uint8 channels-last RGB.

    Values are clipped to [0, 1] and rounded to the nearest of 0..255; gray
    (C = 1) frames are repeated into three channels.

    Args:
        video: (..., C, H, W) float tensor or array in [0, 1], typically
            (T, C, H, W) or (B, T, C, H, W); C must be 1 or 3.

    Returns:
        (..., H, W, 3) uint8 numpy array.

    Raises:
        ValueError: on fewer than 3 dims, C not in {1, 3}, a non-float dtype, or NaN.
        TypeError: if video is neither a tensor nor an array.

    Example:
        >>> to_uint8(torch.ones(5, 1, 8, 8)).shape
        (5, 8, 8, 3)
    """
    if isinstance(video, torch.Tensor):
        if not video.is_floating_point():
            raise ValueError(f"to_uint8: expected a float tensor in [0, 1], got dtype {video.dtype}")
        array = video.detach().to("cpu", torch.float32).numpy()
    elif isinstance(video, np.ndarray):
        if not np.issubdtype(video.dtype, np.floating):
            raise ValueError(f"to_uint8: expected a float array in [0, 1], got dtype {video.dtype}")
        array = video
    else:
        raise TypeError(f"to_uint8: expected a torch.Tensor or numpy.ndarray, got {type(video).__name__}")
    if array.ndim < 3 or array.shape[-3] not in (1, 3):
        raise ValueError(f"to_uint8: expected (..., C, H, W) with C in {{1, 3}}, got shape {array.shape}")
    if np.isnan(array).any():
        raise ValueError("to_uint8: video contains NaN")
    out = np.rint(np.clip(array, 0.0, 1.0) * 255.0).astype(np.uint8)
    out = np.moveaxis(out, -3, -1)  # (..., H, W, C)
    if out.shape[-1] == 1:
        out = np.repeat(out, 3, axis=-1)
    return np.ascontiguousarray(out)


def upscale_nearest(frames: np.ndarray, factor: int) -> np.ndarray:
    """Enlarge uint8 images by an integer factor with nearest-neighbour repetition.

    Args:
        frames: (..., H, W, 3) uint8, e.g. (T, H, W, 3) or (H, W, 3).
        factor: integer >= 1.

    Returns:
        (..., H * factor, W * factor, 3) uint8.
    """
    factor = check_int(factor, "upscale factor", 1)
    if frames.ndim < 3:
        raise ValueError(f"upscale_nearest: expected (..., H, W, 3), got shape {frames.shape}")
    if factor == 1:
        return frames
    return np.repeat(np.repeat(frames, factor, axis=-3), factor, axis=-2)


# --------------------------------------------------------------------------------------
# Grids
# --------------------------------------------------------------------------------------


def _assemble(tiles: np.ndarray, filled: np.ndarray, border: int) -> np.ndarray:
    """Lay out a grid of equally sized tiles with ``border`` px of background between them.

    Args:
        tiles: (R, Cc, *lead, h, w, 3) uint8.
        filled: (R, Cc) bool; cells that are False stay background.
        border: gap in px between neighbouring tiles (none around the outside).

    Returns:
        (*lead, R * h + (R - 1) * border, Cc * w + (Cc - 1) * border, 3) uint8.
    """
    rows, cols = tiles.shape[:2]
    lead = tiles.shape[2:-3]
    h, w = tiles.shape[-3:-1]
    out_h = rows * h + (rows - 1) * border
    out_w = cols * w + (cols - 1) * border
    canvas = np.empty((*lead, out_h, out_w, 3), dtype=np.uint8)
    canvas[...] = np.asarray(BACKGROUND_COLOUR, dtype=np.uint8)
    for r in range(rows):
        for c in range(cols):
            if filled[r, c]:
                top, left = r * (h + border), c * (w + border)
                canvas[..., top : top + h, left : left + w, :] = tiles[r, c]
    return canvas


def comparison_grid(
    truth: ArrayLike,
    pred: ArrayLike,
    context: int,
    border: int = 1,
    frame_width: int = 1,
    ncol: int = 1,
) -> np.ndarray:
    """Side-by-side animation of ground truth and prediction for a batch of sequences.

    Each output frame t is a grid with one cell per sequence; a cell holds the
    ground-truth frame t above the predicted frame t. Every tile is surrounded
    by a coloured frame of ``frame_width`` px: :data:`CONTEXT_COLOUR` (green)
    on both tiles while t < context (observed frames), then
    :data:`PREDICTION_COLOUR` (red) around the prediction and
    :data:`TRUTH_COLOUR` (gray) around the truth. Tiles are separated by
    ``border`` px of :data:`BACKGROUND_COLOUR`.

    Args:
        truth: (B, T, C, H, W) float in [0, 1], tensor or array, C in {1, 3}.
        pred: (B, T, C, H, W) same shape as ``truth`` (for t < context usually the
            context frames or their reconstructions).
        context: number of context frames, 0 <= context <= T.
        border: px of background between tiles, >= 0.
        frame_width: px of the coloured frame around each tile, >= 0.
        ncol: sequences per grid row, >= 1 (default one column of pairs).

    Returns:
        (T, H', W', 3) uint8 with, for R = 2 * ceil(B / ncol) tile rows and
        Cc = min(ncol, B) tile columns, H' = R (H + 2 frame_width) + (R - 1) border
        and W' = Cc (W + 2 frame_width) + (Cc - 1) border.

    Example:
        >>> x = torch.rand(2, 6, 3, 32, 32)
        >>> comparison_grid(x, x, context=2).shape
        (6, 139, 34, 3)
    """
    truth_u8, pred_u8 = to_uint8(truth), to_uint8(pred)
    if truth_u8.ndim != 5 or truth_u8.shape != pred_u8.shape:
        raise ValueError(
            "comparison_grid: truth and pred must both be (B, T, C, H, W) of the same shape, "
            f"got {tuple(truth.shape)} and {tuple(pred.shape)}"
        )
    batch, steps, height, width = truth_u8.shape[:4]
    context = check_int(context, "context", 0)
    if context > steps:
        raise ValueError(f"context must be <= T = {steps}, got {context}")
    border = check_int(border, "border", 0)
    m = check_int(frame_width, "frame_width", 0)
    ncol = check_int(ncol, "ncol", 1)

    # Framed tiles: (B, 2, T, H + 2m, W + 2m, 3), index 0 = truth, 1 = prediction.
    tiles = np.empty((batch, 2, steps, height + 2 * m, width + 2 * m, 3), dtype=np.uint8)
    is_context = (np.arange(steps) < context)[:, None, None, None]  # (T, 1, 1, 1)
    for k, colour in enumerate((TRUTH_COLOUR, PREDICTION_COLOUR)):
        tiles[:, k] = np.where(is_context, np.asarray(CONTEXT_COLOUR, np.uint8), np.asarray(colour, np.uint8))
    tiles[:, 0, :, m : m + height, m : m + width] = truth_u8
    tiles[:, 1, :, m : m + height, m : m + width] = pred_u8

    # Arrange sequences in a (ceil(B / ncol), ncol) grid of pairs -> (R, Cc, T, h, w, 3).
    cols = min(ncol, batch)
    seq_rows = math.ceil(batch / cols)
    padded = np.zeros((seq_rows * cols, *tiles.shape[1:]), dtype=np.uint8)
    padded[:batch] = tiles
    grid = padded.reshape(seq_rows, cols, *tiles.shape[1:])  # (Rs, Cc, 2, T, h, w, 3)
    grid = np.swapaxes(grid, 1, 2).reshape(2 * seq_rows, cols, *tiles.shape[2:])
    filled = np.zeros((seq_rows * cols,), dtype=bool)
    filled[:batch] = True
    filled = np.repeat(filled.reshape(seq_rows, 1, cols), 2, axis=1).reshape(2 * seq_rows, cols)
    return _assemble(grid, filled, border)


def image_grid(images: ArrayLike, ncol: int | None = None, border: int = 1) -> np.ndarray:
    """Tile float images into one uint8 picture, e.g. for analysis figures.

    Args:
        images: (R, Cc, C, H, W) -- laid out as R rows by Cc columns -- or
            (N, C, H, W) -- laid out row-major with ``ncol`` columns; float in
            [0, 1], tensor or array, C in {1, 3}.
        ncol: columns for the (N, C, H, W) form (default ceil(sqrt(N))); for the
            (R, Cc, ...) form it must be None or equal to Cc.
        border: px of background between tiles, >= 0.

    Returns:
        (H', W', 3) uint8; unused cells of the last row are background.
    """
    u8 = to_uint8(images)
    border = check_int(border, "border", 0)
    if u8.ndim == 5:
        rows, cols = u8.shape[:2]
        if ncol is not None and ncol != cols:
            raise ValueError(f"image_grid: ncol={ncol} conflicts with the (R, Cc={cols}, C, H, W) layout")
        return _assemble(u8, np.ones((rows, cols), dtype=bool), border)
    if u8.ndim != 4:
        raise ValueError(
            f"image_grid: expected (N, C, H, W) or (R, Cc, C, H, W), got shape {tuple(images.shape)}"
        )
    count = u8.shape[0]
    if count == 0:
        raise ValueError("image_grid: got no images (N = 0)")
    cols = math.ceil(math.sqrt(count)) if ncol is None else check_int(ncol, "ncol", 1)
    cols = min(cols, count)
    rows = math.ceil(count / cols)
    padded = np.zeros((rows * cols, *u8.shape[1:]), dtype=np.uint8)
    padded[:count] = u8
    filled = (np.arange(rows * cols) < count).reshape(rows, cols)
    return _assemble(padded.reshape(rows, cols, *u8.shape[1:]), filled, border)


# --------------------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------------------


def _check_frames(frames: object, what: str) -> np.ndarray:
    """Validate a (T, H, W, 3) uint8 video and return it."""
    if not isinstance(frames, np.ndarray):
        raise TypeError(f"{what}: frames must be a numpy array, got {type(frames).__name__}")
    if frames.dtype != np.uint8:
        raise ValueError(
            f"{what}: frames must be uint8, got dtype {frames.dtype}; convert float frames "
            "in [0, 1] with to_uint8 first"
        )
    if frames.ndim != 4 or frames.shape[-1] != 3 or min(frames.shape[:3]) < 1:
        raise ValueError(f"{what}: frames must be (T, H, W, 3) with T, H, W >= 1, got shape {frames.shape}")
    return frames


def _check_fps(fps: float) -> float:
    number = isinstance(fps, numbers.Real) and not isinstance(fps, bool)  # NumPy scalars too
    if not (number and math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    return float(fps)


def _atomic_write(path: str | os.PathLike[str], write: Callable[[str], None]) -> Path:
    """`files.atomic_write` into an existing directory (a missing one is an error here)."""
    directory = Path(path).parent
    if not directory.is_dir():
        raise FileNotFoundError(f"directory {str(directory)!r} for {str(path)!r} does not exist")
    return atomic_write(path, write)


def write_gif(path: str | os.PathLike[str], frames: np.ndarray, fps: float = 10, upscale: int = 1) -> Path:
    """Write an animated, endlessly looping GIF (via Pillow), atomically.

    Each frame is quantised to its own 256-colour palette. GIF stores delays
    in 1/100 s, so fps is rounded accordingly; Pillow also merges consecutive
    identical frames into one longer frame (the duration is preserved).

    Args:
        path: destination file, usually ``*.gif``; its directory must exist.
        frames: (T, H, W, 3) uint8 RGB.
        fps: frames per second, > 0.
        upscale: integer nearest-neighbour magnification, >= 1 (e.g. 4 for 32x32 frames).

    Returns:
        The path written.

    Raises:
        ValueError: on frames that are not (T, H, W, 3) uint8, or a bad fps/upscale.
    """
    from PIL import Image

    frames = upscale_nearest(_check_frames(frames, "write_gif"), upscale)
    duration_ms = max(10, round(1000.0 / _check_fps(fps) / 10) * 10)
    images = [Image.fromarray(frame) for frame in frames]

    def write(tmp: str) -> None:
        images[0].save(
            tmp,
            format="GIF",
            save_all=True,
            append_images=images[1:],
            duration=duration_ms,
            loop=0,
        )

    return _atomic_write(path, write)


def write_mp4(path: str | os.PathLike[str], frames: np.ndarray, fps: float = 10, upscale: int = 1) -> Path:
    """Write an MPEG-4 Part 2 (OpenCV ``mp4v``) video, atomically.

    H.264 is not available in opencv-python-headless, so ``mp4v`` is used; the
    result plays in most players and reads back with ``cv2.VideoCapture`` or
    imageio. The codec needs even frame sizes: odd heights/widths are padded by
    repeating the last row/column, so the file may be one pixel larger than
    ``frames`` (after ``upscale``) in each dimension.

    Args:
        path: destination file, should end in ``.mp4``; its directory must exist.
        frames: (T, H, W, 3) uint8 RGB.
        fps: frames per second, > 0.
        upscale: integer nearest-neighbour magnification, >= 1.

    Returns:
        The path written.

    Raises:
        ValueError: on frames that are not (T, H, W, 3) uint8, or a bad fps/upscale.
        RuntimeError: if OpenCV cannot open a writer.
    """
    import cv2

    frames = upscale_nearest(_check_frames(frames, "write_mp4"), upscale)
    fps = _check_fps(fps)
    height, width = frames.shape[1:3]
    pad_h, pad_w = height % 2, width % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
        height, width = height + pad_h, width + pad_w

    def write(tmp: str) -> None:
        writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
        if not writer.isOpened():
            raise RuntimeError(f"write_mp4: OpenCV could not open an mp4v writer for {tmp!r}")
        try:
            for frame in frames:
                writer.write(np.ascontiguousarray(frame[..., ::-1]))  # RGB -> BGR
        finally:
            writer.release()

    return _atomic_write(path, write)


def save_png(path: str | os.PathLike[str], image: np.ndarray, upscale: int = 1) -> Path:
    """Save one uint8 RGB image as PNG, atomically.

    Args:
        path: destination file, usually ``*.png``; its directory must exist.
        image: (H, W, 3) uint8, e.g. from :func:`image_grid`.
        upscale: integer nearest-neighbour magnification, >= 1.

    Returns:
        The path written.
    """
    from PIL import Image

    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise ValueError(
            "save_png: image must be a uint8 numpy array, got "
            f"{getattr(image, 'dtype', type(image).__name__)}"
        )
    if image.ndim != 3 or image.shape[-1] != 3 or min(image.shape[:2]) < 1:
        raise ValueError(f"save_png: image must be (H, W, 3), got shape {image.shape}")
    picture = Image.fromarray(upscale_nearest(image, upscale))
    return _atomic_write(path, lambda tmp: picture.save(tmp, format="PNG"))


def plot_curves(
    path: str | os.PathLike[str],
    curves: Mapping[str, ArrayLike],
    ylabel: str,
    xlabel: str = "open-loop step",
    title: str | None = None,
    x_start: int = 1,
) -> Path:
    """Plot metric-versus-time curves (e.g. SSIM per open-loop step) to a PNG.

    Drawn on a standalone matplotlib ``Figure`` with an Agg canvas, so the
    global pyplot backend is neither needed nor changed.

    Args:
        path: destination file, usually ``*.png``; its directory must exist.
        curves: label -> (T,) values (numpy or torch); lengths may differ.
        ylabel: y-axis label, e.g. "SSIM (gaussian)".
        xlabel: x-axis label.
        title: optional figure title.
        x_start: x value of each curve's first point.

    Returns:
        The path written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not curves:
        raise ValueError("plot_curves: curves is empty; pass at least one label -> (T,) array")
    arrays = {}
    for label, values in curves.items():
        if isinstance(values, torch.Tensor):
            values = values.detach().cpu().numpy()
        array = np.asarray(values, dtype=np.float64)
        if array.ndim != 1 or array.size == 0:
            raise ValueError(
                f"plot_curves: curve {label!r} must be a non-empty 1-D (T,) array, got shape {array.shape}"
            )
        arrays[label] = array

    figure = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for label, array in arrays.items():
        axes.plot(np.arange(x_start, x_start + array.size), array, label=label)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    if title:
        axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()
    return _atomic_write(path, lambda tmp: figure.savefig(tmp, format="png"))
