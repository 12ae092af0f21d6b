"""Moving Ball: shapes, determinism, colour changes at bounces and with lambda, speed."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from worldmodel.data import DataConfig, MovingBallSource, batch_at, build_source
from worldmodel.data.moving_ball import MovingBallOptions, generate_moving_ball


def ball_colours_rgb(videos: np.ndarray) -> np.ndarray:
    """(B, T, 3) colour of the pixel farthest from the background (the ball's centre)."""
    b, t = videos.shape[:2]
    flat = videos.reshape(b, t, -1, videos.shape[-1]).astype(np.int64)
    peak = np.abs(flat - flat[:, :, :1]).sum(-1).argmax(-1)  # corner pixel is background
    return np.take_along_axis(flat, peak[..., None, None], axis=2)[:, :, 0]


def ball_colours(videos: np.ndarray) -> np.ndarray:
    """(B, T) ball colour packed into one integer."""
    return ball_colours_rgb(videos) @ np.array([1 << 16, 1 << 8, 1])


@pytest.mark.parametrize("channels, size", [(3, 32), (1, 32), (3, 64)])
def test_batch_shapes_and_range(channels: int, size: int) -> None:
    source = build_source(DataConfig(image_size=size, channels=channels))
    batch = batch_at(source, 0, 0, batch_size=4, seq_len=20)
    assert batch.frames.shape == (4, 20, channels, size, size)
    assert batch.frames.dtype == torch.float32
    assert 0.0 <= batch.frames.min() and batch.frames.max() <= 1.0
    assert batch.frames.max() > 0.8  # the ball is drawn
    assert source.action_dim == 0 and batch.actions is None


def test_deterministic_given_rng_and_train_test_differ() -> None:
    train = build_source(DataConfig(), "train")
    test = build_source(DataConfig(), "test")
    a = batch_at(train, 1, 5, 3, 10)
    assert torch.equal(a.frames, batch_at(train, 1, 5, 3, 10).frames)
    assert not torch.equal(a.frames, batch_at(train, 1, 6, 3, 10).frames)
    assert not torch.equal(a.frames, batch_at(test, 1, 5, 3, 10).frames)
    assert torch.equal(test.eval_batch(2, 10).frames, test.eval_batch(2, 10).frames)
    assert not torch.equal(test.eval_batch(2, 10).frames, train.eval_batch(2, 10).frames)


def test_colour_changes_exactly_at_bounces_without_lambda() -> None:
    videos, changed = generate_moving_ball(np.random.default_rng(0), 8, 200, 32, 3)
    colours = ball_colours(videos)
    observed = np.zeros_like(changed)
    observed[:, 1:] = colours[:, 1:] != colours[:, :-1]
    assert np.array_equal(observed, changed)
    assert changed.sum() >= 8 * 3  # every ball bounces several times in 200 frames
    # With lam = 0 a change happens only when the ball touches a wall.
    radius = 0.1 * 32
    ys, xs = np.nonzero(changed)
    for b, t in zip(ys, xs):
        frame = videos[b, t].sum(-1) > 0
        rows, cols = np.nonzero(frame)
        near_wall = min(rows.min(), cols.min()) <= 2 * radius or \
            max(rows.max(), cols.max()) >= 31 - 2 * radius
        assert near_wall


def test_lambda_adds_random_changes() -> None:
    rng_args = dict(batch=16, length=200, size=32, channels=3)
    _, base = generate_moving_ball(np.random.default_rng(1), opts=MovingBallOptions(), **rng_args)
    _, noisy = generate_moving_ball(np.random.default_rng(1), opts=MovingBallOptions(lam=0.2),
                                    **rng_args)
    assert noisy.mean() > base.mean() + 0.1
    assert np.all(noisy | ~base)  # same motion, so every bounce still changes the colour


def test_options_shape_the_ball() -> None:
    opts = MovingBallOptions(radius=5, speed=2, palette=[[10, 20, 30], [200, 100, 0]],
                             background=[0, 0, 64])
    videos, _ = generate_moving_ball(np.random.default_rng(2), 2, 60, 32, 3, opts)
    corners = videos[:, :, [0, 0, -1, -1], [0, -1, 0, -1]].reshape(-1, 3)
    assert (corners == [0, 0, 64]).all(axis=1).mean() > 0.95
    centre_colours = {tuple(c) for c in ball_colours_rgb(videos).reshape(-1, 3)}
    assert centre_colours <= {(10, 20, 30), (200, 100, 0)}
    area = (videos != [0, 0, 64]).any(-1).sum((2, 3))  # ~ pi r^2 pixels touched
    assert np.all(np.abs(area - np.pi * 5.5**2) < 15)
    with pytest.raises(ValueError, match="radius"):
        MovingBallSource(32, 3, MovingBallOptions(radius=20))
    with pytest.raises(ValueError, match="gray level"):
        MovingBallSource(32, 1, MovingBallOptions(palette=[[0, 0, 0], [1, 0, 0]]))


def test_sample_with_changes_matches_frames() -> None:
    source = MovingBallSource(32, 3)
    batch, changed = source.sample_with_changes(np.random.default_rng(3), 2, 50)
    assert changed.shape == (2, 50) and changed.dtype == bool
    assert torch.equal(batch.frames, source.sample(np.random.default_rng(3), 2, 50).frames)


def test_generation_is_fast() -> None:
    source = build_source(DataConfig())
    batch_at(source, 0, 0, 16, 100)
    start = time.perf_counter()
    for step in range(5):
        batch_at(source, 0, step, 16, 100)
    assert (time.perf_counter() - start) / 5 < 0.1
