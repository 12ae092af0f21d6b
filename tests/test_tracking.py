"""Tracking scores (worldmodel.evaluation.tracking) against hand-made frames, and a model that
ignores its latents."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from worldmodel import DLH, DLHConfig
from worldmodel.data import ObjectReadout, VideoSource
from worldmodel.data.base import videos_to_frames
from worldmodel.data.moving_ball import MovingBallOptions, MovingBallSource, _palette_array, render_discs
from worldmodel.evaluation.probes import level_probes, linear_r2
from worldmodel.evaluation.tracking import centroid_errors, colour_kept, tracking_scores

SIZE, RADIUS = 32, 3.2


def discs(centres: np.ndarray, colours: np.ndarray, channels: int = 3) -> torch.Tensor:
    """Frames (B, T, C, S, S) of one disc each: centres (B, T, 2) px, colours (B, T) palette index."""
    palette, background = _palette_array(MovingBallOptions(), channels)
    return videos_to_frames(render_discs(centres, RADIUS, palette[colours], background, SIZE))


@pytest.mark.parametrize("channels", [1, 3])
def test_readout_finds_centre_and_colour(channels: int) -> None:
    rng = np.random.default_rng(0)
    centres = rng.uniform(RADIUS, SIZE - RADIUS, (6, 5, 2))
    colours = rng.integers(0, 6, (6, 5))
    source = MovingBallSource(SIZE, channels)
    read = source.read_objects(discs(centres, colours, channels))
    assert read.visible.all()
    np.testing.assert_allclose(read.centroid, centres, atol=0.1)
    np.testing.assert_array_equal(read.colour, colours)


@pytest.mark.parametrize("shift", [(0.0, 0.0), (3.0, 4.0), (-6.0, 0.0), (1.5, -2.0)])
def test_shifted_ball_gives_the_shift(shift: tuple[float, float]) -> None:
    source = MovingBallSource(SIZE, 3)
    centres = np.array([[[10.0, 12.0], [16.0, 16.0], [20.0, 9.5]]])
    colours = np.zeros((1, 3), np.int64)
    truth = source.read_objects(discs(centres, colours))
    pred = source.read_objects(discs(centres + np.array(shift), colours))
    err = centroid_errors(truth, pred, math.hypot(SIZE, SIZE))
    np.testing.assert_allclose(err, np.full((1, 3), math.hypot(*shift)), atol=0.1)


def test_empty_prediction_counts_as_lost() -> None:
    source = MovingBallSource(SIZE, 3)
    truth = source.read_objects(discs(np.full((2, 4, 2), 16.0), np.zeros((2, 4), np.int64)))
    empty = source.read_objects(torch.zeros(2, 4, 3, SIZE, SIZE))
    washed = source.read_objects(torch.full((2, 4, 3, SIZE, SIZE), 0.6))  # colour everywhere
    for pred in (empty, washed):
        assert not pred.visible.any()
        np.testing.assert_allclose(centroid_errors(truth, pred, 45.0), 45.0)
        assert colour_kept(truth, pred, truth.colour[:, 0]) == (0, 8)


def test_colour_kept_counts_frames_before_the_first_change() -> None:
    source = MovingBallSource(SIZE, 3)
    centres = np.full((1, 6, 2), 16.0)
    true_colours = np.array([[0, 0, 0, 2, 2, 2]])  # changes at the 4th predicted frame
    truth = source.read_objects(discs(centres, true_colours))
    right = source.read_objects(discs(centres, np.array([[0, 0, 0, 0, 0, 0]])))
    wrong = source.read_objects(discs(centres, np.array([[0, 1, 1, 2, 2, 2]])))
    assert colour_kept(truth, right, np.array([0])) == (3, 3)  # later frames are not scored
    assert colour_kept(truth, wrong, np.array([0])) == (1, 3)
    assert colour_kept(truth, right, np.array([4])) == (0, 0)  # a change at the first frame


class _Rows:
    """A stand-in state: the rows of the sequences it came from."""

    def __init__(self, rows: torch.Tensor) -> None:
        self.rows = rows

    def repeat_interleave(self, k: int) -> _Rows:
        return _Rows(self.rows.repeat_interleave(k))


class CopyModel:
    """Imagines exactly `video` (B, T, C, H, W) after the context, optionally shifted/blanked."""

    device = torch.device("cpu")

    def __init__(self, video: torch.Tensor, context: int) -> None:
        self.video, self.context = video, context

    def observe(self, frames: torch.Tensor, actions: object, is_first: object) -> object:
        assert frames.shape[1] == self.context
        # a chunk's rows are found by matching its frames with the stored ones
        rows = [int((self.video[:, :self.context] - f).abs().flatten(1).sum(1).argmin()) for f in frames]
        return type("Out", (), {"state": _Rows(torch.tensor(rows))})()

    def imagine(self, state: _Rows, horizon: int, actions: object) -> tuple[_Rows, int]:
        return state, horizon

    def decode(self, traj: tuple[_Rows, int]) -> torch.Tensor:
        rows, horizon = traj
        return self.video[rows.rows, self.context:self.context + horizon]


def _truth(source: MovingBallSource, context: int, horizon: int, sequences: int) -> torch.Tensor:
    return source.eval_batch(sequences, context + horizon, 0).frames


def test_tracking_scores_of_a_perfect_and_a_lost_model() -> None:
    source = MovingBallSource(SIZE, 3, split="test")
    context, horizon = 4, 6
    frames = _truth(source, context, horizon, 5)
    kw = dict(context=context, horizon=horizon, samples=2, sequences=5, at=(1, 6))
    perfect = tracking_scores(CopyModel(frames, context), source, **kw)
    assert perfect["centroid_px_at1"] < 0.05 and perfect["centroid_px_at6"] < 0.05
    assert perfect["colour_kept"] == 1.0 and perfect["visible"] == 1.0
    blank = frames.clone()
    blank[:, context:] = 0
    lost = tracking_scores(CopyModel(blank, context), source, **kw)
    assert lost["centroid_px_at6"] == pytest.approx(math.hypot(SIZE, SIZE))
    assert lost["colour_kept"] == 0.0 and lost["visible"] == 0.0


def test_best_of_k_picks_the_closest_sample() -> None:
    """Sample 0 is off by 5 px, sample 1 exact: the score is the exact one."""
    source = MovingBallSource(SIZE, 3, split="test")
    readout = source.read_objects(_truth(source, 2, 3, 1))
    assert readout is not None
    shifted = ObjectReadout(readout.centroid + np.array([3.0, 4.0]), readout.colour,
                            readout.visible, readout.palette)
    stack = ObjectReadout(*(np.stack([a, b], 1) for a, b in zip(
        (shifted.centroid, shifted.colour, shifted.visible),
        (readout.centroid, readout.colour, readout.visible))), readout.palette)
    err = centroid_errors(readout, stack, 45.0)  # (B, K, T)
    np.testing.assert_allclose(err[:, 0], 5.0, atol=1e-9)
    np.testing.assert_allclose(err[:, 1], 0.0, atol=1e-9)


def test_sources_without_objects_give_none() -> None:
    video = np.zeros((12, 16, 16, 1), np.uint8)
    source = VideoSource.from_arrays([video], 16, 1)
    model = DLH(DLHConfig(levels=2, image_size=16, channels=1, x_dim=8, c_dim=8, d_dim=8, s_dim=4,
                          enc_hidden=(8,), dec_hidden=(8,), state_hidden=(8,), factor_hidden=(8,),
                          conv_depth=4))
    assert tracking_scores(model, source, context=2, horizon=3, samples=1, sequences=2, at=(1,)) is None


def _tiny_dlh() -> DLH:
    torch.manual_seed(0)
    return DLH(DLHConfig(levels=2, image_size=SIZE, channels=3, x_dim=32, c_dim=32, d_dim=32,
                         s_dim=8, enc_hidden=(32,), dec_hidden=(32,), state_hidden=(32,),
                         factor_hidden=(16,), conv_depth=4))


class _ZeroInput(torch.nn.Module):
    """A decoder that ignores its input: what a model whose reconstruction ignores its latents is."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        return self.inner(torch.zeros_like(context))


def recon_spread(model: DLH, frames: torch.Tensor) -> float:
    """Largest pixel difference between the reconstructions of two posterior samples."""
    with torch.no_grad():
        torch.manual_seed(1)
        a = model.observe(frames).recon
        torch.manual_seed(2)
        b = model.observe(frames).recon
    return float((a - b).abs().max())


def test_a_model_that_ignores_its_latents_is_caught() -> None:
    source = MovingBallSource(SIZE, 3, split="test")
    frames = _truth(source, 4, 6, 4)
    model = _tiny_dlh()
    assert recon_spread(model, frames) > 1e-4  # reconstructions follow the posterior sample
    collapsed = _tiny_dlh()
    collapsed.decoder = _ZeroInput(collapsed.decoder)
    assert recon_spread(collapsed, frames) == 0.0
    kw = dict(context=4, horizon=6, samples=2, sequences=4, at=(1, 6))
    lost = tracking_scores(collapsed, source, **kw)
    copied = tracking_scores(CopyModel(frames, 4), source, **kw)
    assert lost["centroid_px_mean"] > 5.0 > 0.1 > copied["centroid_px_mean"]


def test_tracking_scores_are_deterministic_and_leave_the_global_rng() -> None:
    source = MovingBallSource(SIZE, 3, split="test")
    model = _tiny_dlh()
    kw = dict(context=3, horizon=5, samples=3, sequences=4, at=(1, 5))
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    first = tracking_scores(model, source, **kw)
    after = torch.rand(1)
    assert torch.equal(before, after)
    assert first == tracking_scores(model, source, **kw)
    assert set(first) == {"centroid_px_at1", "centroid_px_at5", "centroid_px_mean", "colour_kept",
                          "visible"}


def test_bad_arguments_are_named() -> None:
    source = MovingBallSource(SIZE, 3, split="test")
    with pytest.raises(ValueError, match="at"):
        tracking_scores(_tiny_dlh(), source, horizon=5, at=(1, 10))
    with pytest.raises(ValueError, match="samples"):
        tracking_scores(_tiny_dlh(), source, samples=0)


def test_linear_r2_against_known_maps() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5))
    train = np.arange(200) < 100
    y = x @ rng.normal(size=(5, 2)) + 3.0
    assert linear_r2(x, y, train) == pytest.approx(1.0)
    assert abs(linear_r2(rng.normal(size=(200, 5)), y, train)) < 0.2  # unrelated features


def test_level_probes_keys_and_none() -> None:
    source = MovingBallSource(SIZE, 3, split="test")
    model = _tiny_dlh()
    probes = level_probes(model, source, sequences=4, length=6)
    assert set(probes) == {"level1_position_r2", "level1_colour_r2", "level2_position_r2",
                           "level2_colour_r2"}
    assert all(isinstance(v, float) for v in probes.values())
    assert model.training
    plain = VideoSource.from_arrays([np.zeros((12, SIZE, SIZE, 3), np.uint8)], SIZE, 3)
    assert level_probes(model, plain, sequences=2, length=4) is None


# ---------------------------------------------------------------------- dlh eval / analyze
@pytest.fixture
def ball_run(tmp_path):
    from tests.conftest import tiny_config
    from worldmodel.data import DataConfig
    from worldmodel.training.config import TrainConfig, dump_config

    run = tmp_path / "run"
    run.mkdir()
    cfg = TrainConfig(model=tiny_config(), out_dir=str(run),
                      data=DataConfig(name="moving_ball", image_size=16, channels=1, seq_len=10,
                                      batch_size=2))
    (run / "config.yaml").write_text(dump_config(cfg))
    DLH(tiny_config()).save(run / "model.safetensors")
    return run


TRACK = ["--track-sequences", "3", "--track-samples", "2", "--track-context", "2",
         "--track-horizon", "5"]


def test_eval_and_analyze_report_tracking(ball_run, tmp_path, capsys):
    import json

    from worldmodel.cli import main

    assert main(["eval", "--checkpoint", str(ball_run), "--context", "2", "--horizon", "3",
                 "--samples", "2", "--sequences", "2", "--device", "cpu", "--out",
                 str(tmp_path / "e"), *TRACK]) == 0
    tracking = json.loads((tmp_path / "e" / "eval.json").read_text())["tracking"]
    assert {k: tracking[k] for k in ("context", "horizon", "samples", "sequences")} == {
        "context": 2, "horizon": 5, "samples": 2, "sequences": 3}
    assert {"centroid_px_at1", "centroid_px_at5", "centroid_px_mean", "colour_kept",
            "visible", "definition"} <= set(tracking)
    assert "tracking (best of 2" in capsys.readouterr().out
    assert main(["analyze", "--checkpoint", str(ball_run), "--sequences", "2", "--length", "6",
                 "--maps", "0", "--device", "cpu", "--out", str(tmp_path / "a"), *TRACK,
                 "--probe-sequences", "4", "--probe-length", "6"]) == 0
    analysis = json.loads((tmp_path / "a" / "analysis.json").read_text())
    assert analysis["tracking"]["sequences"] == 3
    assert {"level1_position_r2", "level2_colour_r2", "sequences", "length"} <= set(analysis["probes"])
    assert "level probes R²" in capsys.readouterr().out
    assert main(["analyze", "--checkpoint", str(ball_run), "--sequences", "2", "--length", "6",
                 "--maps", "0", "--device", "cpu", "--out", str(tmp_path / "b"),
                 "--track-sequences", "0", "--probe-sequences", "0"]) == 0
    analysis = json.loads((tmp_path / "b" / "analysis.json").read_text())
    assert "tracking" not in analysis and "probes" not in analysis


# ---------------------------------------------------------------------- trainer
def test_trainer_logs_tracking_and_probes(tmp_path):
    import json

    from tests.test_training import TINY
    from worldmodel.training import Trainer, load_config
    from worldmodel.training.config import resume_changes

    out = tmp_path / "run"
    cfg = load_config(None, [*TINY, f"out_dir={out}", "steps=4", "log_every=2", "media_every=0",
                             "event_every=0", "track_every=3", "track_sequences=2",
                             "track_samples=2"])
    summary = Trainer(cfg, progress=False).fit()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    tracked = {r["step"]: r for r in rows if "track/centroid_px_at1" in r}
    assert sorted(tracked) == [3, 4]  # every track_every steps and at the end
    for key in ("track/centroid_px_at5", "track/colour_kept", "track/visible", "track/seconds",
                "probe/level1_position_r2", "probe/level2_colour_r2"):
        assert key in tracked[3] and key in summary["final_metrics"], key
    # a logging setting: it may change on resume
    changed = load_config(None, [*TINY, f"out_dir={out}", "steps=4", "log_every=2", "media_every=0",
                                 "event_every=0", "track_every=0", "track_sequences=5",
                                 "track_samples=1"])
    assert set(resume_changes(cfg.to_dict(), changed)) == {"probes.track_every", "probes.track_sequences",
                                                           "probes.track_samples"}
    off = tmp_path / "off"
    cfg = load_config(None, [*TINY, f"out_dir={off}", "steps=2", "log_every=1", "media_every=0",
                             "event_every=0", "track_every=0"])
    Trainer(cfg, progress=False).fit()
    assert "track/" not in (off / "metrics.jsonl").read_text()


@pytest.mark.slow
def test_a_short_quick_start_run_learns_to_track_the_ball(tmp_path):
    """400 steps of the quick-start config with `model.init: xavier` (seed 0, 1 thread, ≈ 3-4
    min): one frame after the context the open-loop prediction shows the ball within 2
    px of the truth (median over 32 fresh test sequences, context 10, best of 10 — the standard
    protocol; a lost ball scores the 45-px diagonal), a ball is visible on more than 45 % of the
    predicted frames, and the trainer logged the same scores while training. Measured
    (docs/results.md, "learning early"; `dlh eval`'s protocol on the 400-step checkpoints of the
    same config): 0.80 px at +1 and a ball on 65 % of predicted frames (seed 1: 0.72 px, 65 %);
    with PyTorch's default init (`init: torch`, the quick start's default) the decoder still
    drew no ball at +1 at step 400 (45.3 px; a ball on 28 % of predicted frames)."""
    from worldmodel import load
    from worldmodel.data import build_source
    from worldmodel.training import Trainer, load_config

    bound_at1 = 2.0  # px
    out = tmp_path / "run"
    cfg = load_config(str(Path(__file__).resolve().parents[1] / "configs" / "moving_ball_cpu.yaml"),
                      [f"out_dir={out}", "steps=400", "threads=1", "media_every=0", "event_every=0",
                       "checkpoint_every=400", "track_every=200", "model.init=xavier"])
    summary = Trainer(cfg, progress=False).fit()
    assert "track/centroid_px_at10" in summary["final_metrics"]
    scores = tracking_scores(load(out / "model.safetensors"), build_source(cfg.data, "test"))
    assert scores["visible"] > 0.45, scores
    assert scores["centroid_px_at1"] < bound_at1, scores


def test_a_run_driven_in_blocks_does_its_end_work_once(tmp_path):
    """`train_steps(k)` does the work due at the end (tracking, event probe, checkpoint) when the
    call ends — the agent loop's rounds — unless `run_end` names the run's last step (the
    trainer-overhead benchmark drives one run in blocks)."""
    import json

    from tests.test_training import TINY
    from worldmodel.training import Trainer, load_config

    def tracked_steps(out, run_end):
        cfg = load_config(None, [*TINY, f"out_dir={out}", "steps=6", "log_every=6", "media_every=0",
                                 "event_every=0", "track_every=100", "track_sequences=2",
                                 "track_samples=1", "checkpoint_every=100"])
        trainer = Trainer(cfg, progress=False)
        for _ in range(3):
            trainer.train_steps(2, run_end=run_end)
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        return sorted(r["step"] for r in rows if "track/centroid_px_at1" in r)

    assert tracked_steps(tmp_path / "rounds", None) == [2, 4, 6]
    assert tracked_steps(tmp_path / "one_run", 6) == [6]
