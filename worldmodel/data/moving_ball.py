"""Moving Ball: a ball bouncing in a square canvas, changing colour at wall bounces.

The deterministic variant changes colour only when the ball hits a wall; the
stochastic variant of the paper (§4.4) also changes colour with probability
``lam`` (λ) at every step. Videos are generated on the fly, vectorised over the
batch: no files needed.

Example::

    >>> rng = np.random.default_rng(0)
    >>> videos, changed = generate_moving_ball(rng, 2, 50, 32, 3, MovingBallOptions(lam=0.1))
    >>> videos.shape, changed.shape
    ((2, 50, 32, 32, 3), (2, 50))
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np
import torch

from worldmodel.data.base import (
    Batch,
    ObjectReadout,
    SequenceSource,
    check_batch_args,
    videos_to_frames,
)
from worldmodel.data.options import (
    check_float,
    check_range,
    check_rgb,
    set_field,
)

if TYPE_CHECKING:
    from worldmodel.data.config import DataConfig

DEFAULT_PALETTE: tuple[tuple[int, int, int], ...] = (
    (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255),
)

# Mixed into the generator of the test split so that it is a different stream.
_TEST_SALT = 0x7E57_BA11


@dataclasses.dataclass(frozen=True)
class MovingBallOptions:
    """Options of ``moving_ball`` (``data.options``).

    Attributes:
        lam: probability per step of a random colour change (λ of the paper, §4.4).
        radius: ball radius in pixels; None = 0.1 * image_size.
        speed: pixels per frame, a number or a range [min, max] drawn per video;
            None = [0.03, 0.07] * image_size.
        palette: RGB colours the ball takes (at least 2, distinct).
        background: RGB colour of the canvas.
    """

    lam: float = 0.0
    radius: float | None = None
    speed: float | tuple[float, float] | None = None
    palette: tuple[tuple[int, int, int], ...] = DEFAULT_PALETTE
    background: tuple[int, int, int] = (0, 0, 0)

    def __post_init__(self) -> None:
        set_field(self, "lam", check_float("lam", self.lam, 0.0, 1.0))
        if self.radius is not None:
            set_field(self, "radius", check_float("radius", self.radius, 0.5, None))
        if self.speed is not None:
            set_field(self, "speed", check_range("speed", self.speed, 0.0, None))
        if isinstance(self.palette, str) or not hasattr(self.palette, "__len__"):
            raise ValueError(f"data.options.palette must be a list of RGB triples, "
                             f"got {self.palette!r}")
        palette = tuple(check_rgb("palette", c) for c in self.palette)
        if len(palette) < 2 or len(set(palette)) != len(palette):
            raise ValueError(
                f"data.options.palette needs at least 2 distinct colours, got {list(palette)}"
            )
        set_field(self, "palette", palette)
        set_field(self, "background", check_rgb("background", self.background))


def _palette_array(opts: MovingBallOptions, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Palette (P, C) and background (C,) as float32 in the output channel format."""
    colours = np.asarray(opts.palette + (opts.background,), np.float32)  # (P + 1, 3)
    if channels == 1:  # same fixed-point luma as base.convert_channels
        colours = np.floor((colours @ np.array([77, 150, 29], np.float32) + 128) / 256)[:, None]
    return colours[:-1], colours[-1]


def ball_geometry(size: int, opts: MovingBallOptions) -> tuple[float, tuple[float, float]]:
    """Radius and speed range in pixels for a ``size`` canvas; ValueError if they do not fit."""
    radius = opts.radius if opts.radius is not None else 0.1 * size
    speed = opts.speed if opts.speed is not None else (0.03 * size, 0.07 * size)
    travel = size - 2 * radius
    if travel <= 1:
        raise ValueError(f"data.options.radius={radius} is too large for image_size={size}")
    if speed[1] >= travel:
        raise ValueError(f"data.options.speed={speed} must stay below the free travel "
                         f"{travel:.1f} px of a {size}-px canvas with radius {radius}")
    return radius, speed


def generate_moving_ball(
    rng: np.random.Generator, batch: int, length: int, size: int, channels: int,
    opts: MovingBallOptions | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Generate Moving Ball videos.

    Args:
        rng: the only source of randomness.
        batch, length, size, channels: B, T, S (= H = W), C (1 or 3).
        opts: ball options (defaults if None).

    Returns:
        videos: (B, T, S, S, C) uint8.
        changed: (B, T) bool, True where the colour at t differs from t - 1 (False at t = 0).
    """
    opts = opts or MovingBallOptions()
    radius, (speed_lo, speed_hi) = ball_geometry(size, opts)
    palette, background = _palette_array(opts, channels)
    n_colours = len(palette)
    travel = size - 2 * radius

    # Motion in closed form: the unfolded coordinate u moves in a straight line and the
    # position is u folded into [0, travel] (a triangle wave); a wall is hit whenever
    # u crosses a multiple of travel.
    speed = rng.uniform(speed_lo, speed_hi, batch)
    angle = rng.uniform(0.0, 2 * np.pi, batch)
    velocity = speed[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=1)  # (B, 2)
    start = rng.uniform(0.0, travel, (batch, 2))
    steps = np.arange(length, dtype=np.float64)
    unfolded = start[:, None, :] + velocity[:, None, :] * steps[None, :, None]  # (B, T, 2)
    centre = radius + travel - np.abs(np.mod(unfolded, 2 * travel) - travel)  # (B, T, 2) x, y
    wall = np.floor(unfolded / travel)
    bounce = np.zeros((batch, length), bool)
    bounce[:, 1:] = np.any(wall[:, 1:] != wall[:, :-1], axis=-1)

    # Colours: every change adds 1..P-1 to the palette index (mod P), so it always differs.
    random_change = rng.random((batch, length)) < opts.lam
    random_change[:, 0] = False
    changed = bounce | random_change
    increment = np.where(changed, rng.integers(1, n_colours, (batch, length)), 0)
    first = rng.integers(0, n_colours, batch)
    colour_index = (first[:, None] + np.cumsum(increment, axis=1)) % n_colours  # (B, T)

    return render_discs(centre, radius, palette[colour_index], background, size), changed


def render_discs(
    centre: np.ndarray, radius: float, colour: np.ndarray, background: np.ndarray, size: int
) -> np.ndarray:
    """Draw one anti-aliased disc per frame on a uniform background.

    Args:
        centre: (B, T, 2) disc centres (x, y) in pixels; pixel i spans [i, i + 1).
        radius: disc radius in pixels; coverage falls from 1 to 0 over one pixel at the rim.
        colour: (B, T, C) disc colours; background: (C,) canvas colour.
        size: S.

    Returns:
        (B, T, S, S, C) uint8.
    """
    batch, length, channels = colour.shape
    # Only a p x p patch around each centre can be covered: pixels i with
    # c - r - 1 < i < c + r, so the patch starts at floor(c - r).
    p = min(size, int(np.ceil(2 * radius + 2)))
    centre = centre.astype(np.float32)
    corner = np.clip(np.floor(centre - radius).astype(np.int64), 0, size - p)  # (B, T, 2)
    offsets = np.arange(p)
    xs = corner[..., 0, None] + offsets  # (B, T, p)
    ys = corner[..., 1, None] + offsets  # (B, T, p)
    dx2 = np.square(xs.astype(np.float32) + np.float32(0.5) - centre[..., 0, None])
    dy2 = np.square(ys.astype(np.float32) + np.float32(0.5) - centre[..., 1, None])
    dist = np.sqrt(dy2[..., :, None] + dx2[..., None, :])  # (B, T, p, p)
    alpha = np.clip(np.float32(radius + 0.5) - dist, 0.0, 1.0)
    background = background.astype(np.float32)
    delta = colour.astype(np.float32) - background  # (B, T, C)
    patch = background + alpha[..., None] * delta[:, :, None, None, :]  # (B, T, p, p, C)

    videos = np.empty((batch, length, size, size, channels), np.uint8)
    frame = np.broadcast_to(np.rint(background).astype(np.uint8), (size * size, channels))
    videos.reshape(batch * length, -1)[:] = frame.reshape(-1)  # fill with long rows: fast
    pixel = ((np.arange(batch)[:, None, None, None] * length
              + np.arange(length)[None, :, None, None]) * size
             + ys[..., :, None]) * size + xs[..., None, :]  # (B, T, p, p) flat pixel index
    videos.reshape(-1, channels)[pixel.reshape(-1)] = np.rint(patch).astype(np.uint8).reshape(
        -1, channels)
    return videos


def read_ball(
    frames: torch.Tensor, palette: np.ndarray, background: np.ndarray, radius: float,
    threshold: float | None = None, core: float = 0.75,
) -> ObjectReadout:
    """Read one ball per frame off the pixels of real or predicted frames.

    Foreground: pixels whose largest channel difference from the background exceeds
    `threshold`. The centroid is the foreground's mean pixel centre weighted by that
    difference; the colour is the palette colour nearest to the mean colour of the core
    (foreground pixels within `core` of the frame's largest difference, so that the rim's
    blend with the background does not pull it); a ball is visible when the foreground
    covers between a quarter of the disc's area and four times it (a frame washed over with
    colour, as an untrained decoder draws, shows no ball).

    Args:
        frames: (B, T, C, H, W) float in [0, 1], on any device.
        palette: (P, C) and background: (C,) colours in [0, 255] (`_palette_array`).
        radius: the ball's radius in pixels.
        threshold: foreground threshold in [0, 1] units; None = a quarter of the smallest
            palette-to-background contrast.
        core: fraction of the frame's largest difference a pixel needs to count in the colour.

    Returns:
        An ObjectReadout with (B, T) arrays (palette scaled to [0, 1]).
    """
    if frames.dim() != 5:
        raise ValueError(f"frames: expected (B, T, C, H, W), got shape {tuple(frames.shape)}")
    channels, height, width = frames.shape[2:]
    if channels != palette.shape[1]:
        raise ValueError(f"frames have {channels} channels, the palette {palette.shape[1]}")
    pal = palette.astype(np.float32) / 255.0
    bg = background.astype(np.float32) / 255.0
    if threshold is None:
        threshold = 0.25 * float(np.abs(pal - bg).max(1).min())
    frames = frames.detach().float()
    bg_t = torch.as_tensor(bg, device=frames.device).view(1, 1, -1, 1, 1)
    diff = (frames - bg_t).abs().amax(2)  # (B, T, H, W)
    fg = diff > threshold
    weight = diff * fg
    mass = weight.sum((-2, -1))  # (B, T)
    xs = torch.arange(width, device=frames.device, dtype=frames.dtype) + 0.5
    ys = torch.arange(height, device=frames.device, dtype=frames.dtype) + 0.5
    cx = (weight.sum(-2) * xs).sum(-1) / mass.clamp_min(1e-12)
    cy = (weight.sum(-1) * ys).sum(-1) / mass.clamp_min(1e-12)
    area = fg.sum((-2, -1))
    disc = np.pi * radius**2
    visible = (area >= max(1.0, 0.25 * disc)) & (area <= 4 * disc)
    peak = diff.amax((-2, -1), keepdim=True)
    inner = (fg & (diff >= core * peak)).unsqueeze(2)  # (B, T, 1, H, W)
    mean_colour = (frames * inner).sum((-2, -1)) / inner.sum((-2, -1)).clamp_min(1)  # (B, T, C)
    pal_t = torch.as_tensor(pal, device=frames.device)
    nearest = (mean_colour.unsqueeze(-2) - pal_t).square().sum(-1).argmin(-1)  # (B, T)
    visible_np = visible.cpu().numpy()
    centroid = torch.stack([cx, cy], -1).cpu().double().numpy()
    centroid[~visible_np] = np.nan
    colour = np.where(visible_np, nearest.cpu().numpy(), -1).astype(np.int64)
    return ObjectReadout(centroid=centroid, colour=colour, visible=visible_np, palette=pal)


class MovingBallSource(SequenceSource):
    """Moving Ball windows generated on demand; the test split is a different stream.

    Args:
        image_size: S; channels: C (1 or 3); options: ball options; split: "train" | "test".
    """

    def __init__(
        self, image_size: int = 32, channels: int = 3,
        options: MovingBallOptions | None = None, split: str = "train",
    ) -> None:
        self.image_size = image_size
        self.channels = channels
        self.action_dim = 0
        self.split = split
        self.options = options or MovingBallOptions()
        ball_geometry(image_size, self.options)  # fail now, not at the first batch
        palette, _ = _palette_array(self.options, channels)
        if len(np.unique(palette, axis=0)) != len(palette):
            raise ValueError(
                f"data.options.palette {list(self.options.palette)} has colours with the same "
                f"gray level, so colour changes would be invisible with channels=1"
            )

    def _stream(self, rng: np.random.Generator) -> np.random.Generator:
        if self.split == "train":
            return rng
        return np.random.default_rng([_TEST_SALT, *rng.integers(0, 2**32, 4).tolist()])

    def sample_with_changes(
        self, rng: np.random.Generator, batch_size: int, seq_len: int
    ) -> tuple[Batch, np.ndarray]:
        """Like :meth:`sample`, plus the (B, T) bool ground-truth colour-change flags."""
        check_batch_args(batch_size, seq_len)
        videos, changed = generate_moving_ball(
            self._stream(rng), batch_size, seq_len, self.image_size, self.channels, self.options
        )
        return Batch(frames=videos_to_frames(videos)), changed

    def sample(self, rng: np.random.Generator, batch_size: int, seq_len: int) -> Batch:
        return self.sample_with_changes(rng, batch_size, seq_len)[0]

    def eval_batch_with_events(self, num: int, seq_len: int, seed: int = 0) -> tuple[Batch, np.ndarray]:
        """The windows of `eval_batch` and their colour-change flags (B, T) bool."""
        return self.sample_with_changes(self.eval_rng(seed), num, seq_len)

    def read_objects(self, frames: torch.Tensor) -> ObjectReadout:
        """The ball of every frame (B, T, C, H, W), read off the pixels (`read_ball`)."""
        palette, background = _palette_array(self.options, self.channels)
        radius, _ = ball_geometry(self.image_size, self.options)
        return read_ball(frames, palette, background, radius)

    def __repr__(self) -> str:
        return (f"MovingBallSource(split={self.split!r}, size={self.image_size}, "
                f"channels={self.channels}, options={self.options})")


def build(cfg: DataConfig, options: MovingBallOptions, split: str) -> MovingBallSource:
    return MovingBallSource(cfg.image_size, cfg.channels, options, split)
