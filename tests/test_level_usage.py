"""The swap test of level usage (worldmodel.evaluation.swap) on hand-made models whose levels
hold known features, and on a real DLH whose level 2 is cut off from the frame."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from worldmodel import DLH, DLHConfig
from worldmodel.data import VideoSource
from worldmodel.data.base import videos_to_frames
from worldmodel.data.moving_ball import MovingBallOptions, MovingBallSource, _palette_array, render_discs
from worldmodel.evaluation.swap import format_usage, level_usage, pixel_share
from worldmodel.state import HierarchicalState

SIZE = 32
RADIUS = 0.1 * SIZE


class OracleModel:
    """A two-level "model" whose posterior means are the true ball of the last frame.

    upper_colour=True: level 1 holds the position (x, y), level 2 the colour (one-hot), and
    the decoder draws the ball at level 1's position in level 2's colour. False: level 1 holds
    both, level 2 random numbers the decoder never reads.
    """

    def __init__(self, source: MovingBallSource, upper_colour: bool) -> None:
        self.source, self.upper_colour = source, upper_colour
        self.palette, self.background = _palette_array(MovingBallOptions(), 3)
        self.config = SimpleNamespace(levels=2, c_dim=2 + len(self.palette))
        self.training, self.device = True, torch.device("cpu")
        self.hierarchy = SimpleNamespace(decode_from=self._decode_from)

    def eval(self) -> OracleModel:
        self.training = False
        return self

    def train(self, mode: bool = True) -> OracleModel:
        self.training = mode
        return self

    def observe(self, frames: torch.Tensor, actions: object = None) -> SimpleNamespace:
        ball = self.source.read_objects(frames[:, -1:])
        position = torch.as_tensor(ball.centroid[:, 0], dtype=torch.float32)
        colour = torch.nn.functional.one_hot(torch.as_tensor(ball.colour[:, 0]), len(self.palette)).float()
        noise = torch.randn(len(position), 4)
        means = [position, colour] if self.upper_colour else [torch.cat([position, colour], 1), noise]
        rows = len(position)
        state = HierarchicalState(
            s=list(means), mean=list(means), std=[torch.ones_like(m) for m in means],
            d=[torch.zeros(rows, 1)] * 2, top_down=[torch.zeros(rows, 1)] * 2,
            pending=torch.zeros(rows, 2, dtype=torch.bool), t=torch.ones(rows, dtype=torch.long),
            factor=[torch.zeros(rows, 0)] * 2,
        )
        return SimpleNamespace(state=state)

    def _decode_from(self, level: int, s: list[torch.Tensor], top_down: list[torch.Tensor]) -> tuple:
        c0 = torch.cat([s[0], s[1]], 1) if self.upper_colour else s[0]
        return s, [c0, top_down[1]]

    def decoder(self, c0: torch.Tensor) -> torch.Tensor:
        position, colour = c0[:, :2].numpy(), c0[:, 2:2 + len(self.palette)].argmax(1).numpy()
        video = render_discs(position[:, None], RADIUS, self.palette[colour][:, None],
                             self.background, SIZE)
        return videos_to_frames(video)[:, 0]


@pytest.mark.parametrize("upper_colour", [True, False])
def test_the_swap_finds_where_the_colour_lives(upper_colour: bool) -> None:
    source = MovingBallSource(SIZE, 3, split="test")
    usage = level_usage(OracleModel(source, upper_colour), source, sequences=64, length=3)
    assert usage["swap_pairs"] == 32 and usage["swap_scored"] >= 16
    if upper_colour:  # colour from level 2, position from level 1
        assert usage["level2_colour_upper"] == 1.0 and usage["level2_colour_lower"] == 0.0
        assert 0.05 < usage["level2_pixel_share"] < 0.95
    else:  # level 2 ignored: the frame is A's
        assert usage["level2_colour_upper"] == 0.0 and usage["level2_colour_lower"] == 1.0
        assert usage["level2_pixel_share"] == 0.0
    assert usage["level2_position_px"] < 0.5 < usage["level2_position_upper_px"]
    assert "colour follows it" in format_usage(usage)


def _tiny(levels: int = 2) -> DLH:
    torch.manual_seed(0)
    return DLH(DLHConfig(levels=levels, image_size=SIZE, channels=3, x_dim=16, c_dim=16, d_dim=16, s_dim=4,
                         enc_hidden=(16,), dec_hidden=(16,), state_hidden=(16,), factor_hidden=(8,),
                         conv_depth=4, init="xavier"))


def test_a_level_cut_off_from_the_frame_has_no_share() -> None:
    source = MovingBallSource(SIZE, 3, split="test")
    model = _tiny()
    used = level_usage(model, source, sequences=16, length=4)
    assert used["level2_pixel_share"] > 1e-3
    with torch.no_grad():  # level 1's f_dec stops reading the context c^1 from level 2
        model.hierarchy.levels[0].decoder._linears[0].weight[:, model.config.s_dim:] = 0.0
    cut = level_usage(model, source, sequences=16, length=4)
    assert cut["level2_pixel_share"] == 0.0 and cut["level2_colour_upper"] == 0.0


def test_data_without_objects_gets_the_pixel_share_only_and_levels_three() -> None:
    rng = np.random.default_rng(0)
    videos = [rng.integers(0, 255, (8, SIZE, SIZE, 3), dtype=np.uint8) for _ in range(4)]
    source = VideoSource.from_arrays(videos, SIZE, 3)
    usage = level_usage(_tiny(3), source, sequences=4, length=3)
    assert set(usage) == {"swap_pairs", "level2_pixel_share", "level3_pixel_share"}
    assert "colour" not in format_usage(usage)


def test_usage_is_deterministic_restores_mode_and_leaves_the_global_rng() -> None:
    source = MovingBallSource(SIZE, 3, split="test")
    model = _tiny()
    torch.manual_seed(5)
    expected = torch.rand(1)
    torch.manual_seed(5)
    first = level_usage(model, source, sequences=8, length=3)
    assert torch.equal(torch.rand(1), expected) and model.training
    assert level_usage(model, source, sequences=8, length=3) == first


def test_bad_arguments_are_named() -> None:
    source = MovingBallSource(SIZE, 3, split="test")
    with pytest.raises(ValueError, match="sequences"):
        level_usage(_tiny(), source, sequences=1)
    with pytest.raises(ValueError, match="at least 2 levels"):
        level_usage(_tiny(1), source, sequences=4)


def test_pixel_share_is_zero_one_and_nan() -> None:
    a, b = torch.zeros(2, 3, 4, 4), torch.ones(2, 3, 4, 4)
    assert pixel_share(a, a, b) == 0.0 and pixel_share(b, a, b) == 1.0
    assert math.isnan(pixel_share(a, a, a))
