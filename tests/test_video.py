"""Tests for worldmodel.video: conversion, grids, and GIF / MP4 / PNG / plot writers."""

from __future__ import annotations

import cv2
import imageio.v3 as iio
import numpy as np
import pytest
import torch
from PIL import Image

from worldmodel.video import (
    BACKGROUND_COLOUR,
    CONTEXT_COLOUR,
    PREDICTION_COLOUR,
    TRUTH_COLOUR,
    comparison_grid,
    image_grid,
    plot_curves,
    save_png,
    to_uint8,
    upscale_nearest,
    write_gif,
    write_mp4,
)


def moving_square(steps: int = 6, size: int = 16, channels: int = 3) -> np.ndarray:
    """(T, C, H, W) float video of a bright square moving right: every frame differs."""
    frames = np.zeros((steps, channels, size, size), dtype=np.float32)
    for t in range(steps):
        frames[t, :, 4:10, t : t + 6] = 1.0
    frames[:, 0] += 0.2  # tint so RGB channels differ
    return frames.clip(0, 1)


def read_mp4(path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame[..., ::-1])  # BGR -> RGB
    capture.release()
    return frames


def no_temp_files(directory) -> bool:
    return not any(".tmp" in p.name for p in directory.iterdir())


# --------------------------------------------------------------------------------------
# Conversion
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(5, 3, 8, 9), (2, 5, 1, 8, 9), (3, 8, 9)])
def test_to_uint8_shapes_and_gray_to_rgb(shape):
    x = torch.rand(shape)
    out = to_uint8(x)
    assert out.dtype == np.uint8
    assert out.shape == (*shape[:-3], 8, 9, 3)
    if shape[-3] == 1:
        assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    assert np.array_equal(out, to_uint8(x.numpy()))


def test_to_uint8_values_clip_and_round():
    x = np.array([-0.5, 0.0, 0.5, 1.0, 2.0], dtype=np.float64).reshape(1, 1, 1, 5)
    assert to_uint8(x)[0, 0, :, 0].tolist() == [0, 0, 128, 255, 255]


@pytest.mark.parametrize(
    "bad,match",
    [
        (np.zeros((2, 3, 4, 4), dtype=np.uint8), "float"),
        (torch.zeros(2, 3, 4, 4, dtype=torch.int64), "float"),
        (np.zeros((2, 2, 4, 4), dtype=np.float32), r"C in \{1, 3\}"),
        (np.zeros((4, 4), dtype=np.float32), r"C in \{1, 3\}"),
        (np.full((1, 3, 4, 4), np.nan, dtype=np.float32), "NaN"),
    ],
)
def test_to_uint8_rejects_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        to_uint8(bad)
    with pytest.raises(TypeError, match="torch.Tensor or numpy.ndarray"):
        to_uint8([[0.0]])


def test_upscale_nearest():
    frames = np.arange(2 * 2 * 3 * 3, dtype=np.uint8).reshape(2, 2, 3, 3)
    big = upscale_nearest(frames, 3)
    assert big.shape == (2, 6, 9, 3)
    assert np.array_equal(big[:, ::3, ::3], frames)
    assert np.array_equal(big[:, 2::3, 2::3], frames)
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="upscale factor: expected a positive int"):
            upscale_nearest(frames, bad)


# --------------------------------------------------------------------------------------
# Grids
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch,ncol,border,frame_width", [(1, 1, 1, 1), (3, 1, 2, 1), (3, 2, 0, 2)])
def test_comparison_grid_shape(batch, ncol, border, frame_width):
    h, w, steps = 8, 10, 4
    truth = torch.rand(batch, steps, 3, h, w)
    grid = comparison_grid(truth, truth, context=2, border=border, frame_width=frame_width, ncol=ncol)
    rows = 2 * -(-batch // ncol)
    cols = min(ncol, batch)
    tile_h, tile_w = h + 2 * frame_width, w + 2 * frame_width
    assert grid.dtype == np.uint8
    assert grid.shape == (
        steps,
        rows * tile_h + (rows - 1) * border,
        cols * tile_w + (cols - 1) * border,
        3,
    )


def test_comparison_grid_layout_and_context_colours():
    batch, steps, h, w, context, border = 2, 5, 6, 7, 2, 1
    gen = torch.Generator().manual_seed(0)
    truth = torch.rand(batch, steps, 1, h, w, generator=gen)
    pred = torch.rand(batch, steps, 1, h, w, generator=gen)
    grid = comparison_grid(truth, pred, context=context, border=border)
    tile_h = h + 2
    truth_u8, pred_u8 = to_uint8(truth), to_uint8(pred)
    for b in range(batch):
        top_truth = 2 * b * (tile_h + border)
        top_pred = top_truth + tile_h + border
        for t in range(steps):
            # Images sit inside a 1 px frame, truth above prediction.
            assert np.array_equal(grid[t, top_truth + 1 : top_truth + 1 + h, 1 : 1 + w], truth_u8[b, t])
            assert np.array_equal(grid[t, top_pred + 1 : top_pred + 1 + h, 1 : 1 + w], pred_u8[b, t])
            # Frame colours: green while observed, then gray (truth) / red (prediction).
            truth_colour = CONTEXT_COLOUR if t < context else TRUTH_COLOUR
            pred_colour = CONTEXT_COLOUR if t < context else PREDICTION_COLOUR
            assert tuple(grid[t, top_truth, 0]) == truth_colour
            assert tuple(grid[t, top_truth + tile_h - 1, w + 1]) == truth_colour
            assert tuple(grid[t, top_pred, 3]) == pred_colour
            assert tuple(grid[t, top_pred + 3, w + 1]) == pred_colour
            # Background gap between the truth and prediction tiles.
            assert tuple(grid[t, top_truth + tile_h, 2]) == BACKGROUND_COLOUR


def test_comparison_grid_context_edge_cases_and_errors():
    x = np.random.default_rng(0).random((1, 3, 3, 8, 8)).astype(np.float32)
    all_context = comparison_grid(x, x, context=3)
    assert all(tuple(all_context[t, 0, 0]) == CONTEXT_COLOUR for t in range(3))
    no_context = comparison_grid(x, x, context=0)
    assert tuple(no_context[0, 8 + 2 + 1, 0]) == PREDICTION_COLOUR  # prediction tile top
    with pytest.raises(ValueError, match="context must be <= T"):
        comparison_grid(x, x, context=4)
    with pytest.raises(ValueError, match="context: expected a non-negative int"):
        comparison_grid(x, x, context=-1)
    with pytest.raises(ValueError, match="same shape"):
        comparison_grid(x, x[:, :2], context=1)
    with pytest.raises(ValueError, match=r"\(B, T, C, H, W\)"):
        comparison_grid(x[0], x[0], context=1)
    with pytest.raises(ValueError, match="border"):
        comparison_grid(x, x, context=1, border=-1)


def test_comparison_grid_blank_cells_with_ncol():
    x = np.zeros((3, 2, 1, 4, 4), dtype=np.float32)
    grid = comparison_grid(x, x, context=1, border=1, ncol=2)  # 2x2 cells, last one empty
    tile = 4 + 2
    assert grid.shape == (2, 4 * tile + 3, 2 * tile + 1, 3)
    empty = grid[:, 2 * (tile + 1) :, tile + 1 :]
    assert (empty == np.asarray(BACKGROUND_COLOUR, np.uint8)).all()


def test_image_grid_layouts():
    images = torch.rand(5, 3, 6, 4)
    grid = image_grid(images, ncol=2, border=1)
    assert grid.shape == (3 * 6 + 2, 2 * 4 + 1, 3)
    assert (grid[-6:, 5:] == 255).all()  # the sixth cell is empty background
    assert np.array_equal(grid[7:13, 5:9], to_uint8(images[3]))
    assert image_grid(images).shape == (2 * 6 + 1, 3 * 4 + 2, 3)  # ncol = ceil(sqrt(5)) = 3
    rows = image_grid(torch.rand(2, 3, 1, 6, 4), border=0)
    assert rows.shape == (12, 12, 3)
    with pytest.raises(ValueError, match="conflicts"):
        image_grid(torch.rand(2, 3, 1, 6, 4), ncol=2)
    with pytest.raises(ValueError, match="N = 0"):
        image_grid(torch.rand(0, 3, 6, 4))


# --------------------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("upscale", [1, 2])
def test_write_gif_round_trip(tmp_path, upscale):
    frames = to_uint8(moving_square(steps=6, size=16))
    path = write_gif(tmp_path / "clip.gif", frames, fps=10, upscale=upscale)
    assert path == tmp_path / "clip.gif"
    back = iio.imread(path, index=None)
    assert back.shape[:3] == (6, 16 * upscale, 16 * upscale)
    assert np.abs(back[..., :3].astype(int) - upscale_nearest(frames, upscale)).max() <= 8
    assert Image.open(path).info["duration"] == 100
    assert no_temp_files(tmp_path)


@pytest.mark.parametrize("size,upscale,expected", [(16, 1, 16), (16, 2, 32), (15, 1, 16)])
def test_write_mp4_round_trip(tmp_path, size, upscale, expected):
    frames = to_uint8(moving_square(steps=7, size=size))
    path = write_mp4(tmp_path / "clip.mp4", frames, fps=10, upscale=upscale)
    back = read_mp4(path)
    assert len(back) == 7
    assert back[0].shape == (expected, expected, 3)
    # Lossy codec: compare a frame's mean brightness only.
    assert abs(back[3][:size, :size].mean() - upscale_nearest(frames, upscale)[3][:size, :size].mean()) < 20
    assert no_temp_files(tmp_path)


def test_write_comparison_grid_as_video(tmp_path):
    truth = torch.from_numpy(np.stack([moving_square(8, 16, 1)] * 2))
    grid = comparison_grid(truth, truth.flip(-1), context=3)
    write_gif(tmp_path / "cmp.gif", grid, upscale=2)
    write_mp4(tmp_path / "cmp.mp4", grid, upscale=2)
    assert iio.imread(tmp_path / "cmp.gif", index=None).shape[:3] == (
        8,
        *[2 * s for s in grid.shape[1:3]],
    )
    assert len(read_mp4(tmp_path / "cmp.mp4")) == 8


@pytest.mark.parametrize("writer", [write_gif, write_mp4])
@pytest.mark.parametrize(
    "frames,match",
    [
        (np.zeros((2, 8, 8, 3), dtype=np.float32), "uint8"),
        (np.zeros((2, 8, 8), dtype=np.uint8), r"\(T, H, W, 3\)"),
        (np.zeros((2, 8, 8, 1), dtype=np.uint8), r"\(T, H, W, 3\)"),
        (np.zeros((0, 8, 8, 3), dtype=np.uint8), r"\(T, H, W, 3\)"),
    ],
)
def test_writers_reject_bad_frames(tmp_path, writer, frames, match):
    with pytest.raises(ValueError, match=match):
        writer(tmp_path / "bad.out", frames)
    with pytest.raises(TypeError, match="numpy array"):
        writer(tmp_path / "bad.out", [np.zeros((8, 8, 3), dtype=np.uint8)])
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("writer", [write_gif, write_mp4])
def test_writers_reject_bad_fps_and_upscale(tmp_path, writer):
    frames = np.zeros((2, 8, 8, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="fps"):
        writer(tmp_path / "a.mp4", frames, fps=0)
    with pytest.raises(ValueError, match="upscale"):
        writer(tmp_path / "a.mp4", frames, upscale=0)


def test_write_is_atomic_on_failure(tmp_path, monkeypatch):
    frames = to_uint8(moving_square(3, 8))
    gif, mp4 = tmp_path / "clip.gif", tmp_path / "clip.mp4"
    gif.write_bytes(b"previous gif")
    mp4.write_bytes(b"previous mp4")

    def failing_save(self, fp, *args, **kwargs):
        with open(fp, "wb") as f:  # a partial temp file, then the crash
            f.write(b"GIF8")
        raise OSError("disk full")

    class FailingWriter:
        def __init__(self, filename, *args):
            open(filename, "wb").close()

        def isOpened(self):
            return True

        def write(self, frame):
            raise OSError("disk full")

        def release(self):
            pass

    monkeypatch.setattr(Image.Image, "save", failing_save)
    monkeypatch.setattr(cv2, "VideoWriter", FailingWriter)
    with pytest.raises(OSError, match="disk full"):
        write_gif(gif, frames)
    with pytest.raises(OSError, match="disk full"):
        write_mp4(mp4, frames)
    assert gif.read_bytes() == b"previous gif" and mp4.read_bytes() == b"previous mp4"
    assert no_temp_files(tmp_path)


def test_writer_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_gif(tmp_path / "nope" / "a.gif", np.zeros((1, 4, 4, 3), dtype=np.uint8))


def test_save_png_round_trip(tmp_path):
    image = image_grid(torch.rand(4, 3, 8, 8), ncol=2)
    save_png(tmp_path / "grid.png", image)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "grid.png").convert("RGB")), image)
    save_png(tmp_path / "big.png", image, upscale=2)
    assert Image.open(tmp_path / "big.png").size == (2 * image.shape[1], 2 * image.shape[0])
    with pytest.raises(ValueError, match="uint8"):
        save_png(tmp_path / "bad.png", image.astype(np.float32))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        save_png(tmp_path / "bad.png", image[..., 0])


def test_plot_curves_writes_png(tmp_path):
    curves = {"model A": np.linspace(0.9, 0.6, 20), "model B": torch.linspace(0.95, 0.5, 15)}
    path = plot_curves(tmp_path / "ssim.png", curves, ylabel="SSIM (gaussian)", title="SSIM")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (600, 400)
    assert no_temp_files(tmp_path)
    with pytest.raises(ValueError, match="empty"):
        plot_curves(tmp_path / "x.png", {}, ylabel="y")
    with pytest.raises(ValueError, match="'bad'"):
        plot_curves(tmp_path / "x.png", {"bad": np.zeros((2, 3))}, ylabel="y")
