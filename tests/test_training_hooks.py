"""The trainer's loop: hooks at their intervals (and at the same steps after a resume), the
model back in training mode after a failed measurement, step metrics as floats only on log steps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_training import TINY

from worldmodel.training import Trainer, load_config
from worldmodel.training.hooks import Hook, LogHook, host_floats

#: every hook of the loop fires within 12 steps; the event probe on a few short windows
EVERY = ["steps=12", "log_every=4", "media_every=3", "checkpoint_every=6", "probes.event_every=4",
         "probes.event_sequences=2", "probes.event_length=8", "probes.track_every=0"]


def _cfg(out: Path, *extra: str):
    return load_config(None, [*TINY, *EVERY, f"out_dir={out}", *extra])


class Recorder(Hook):
    """A user's hook: the steps it fired at, and whether on_end ran."""

    def __init__(self, every: int) -> None:
        super().__init__(every)
        self.fired: list[int] = []
        self.ended = False

    def fire(self, trainer: Trainer) -> None:
        self.fired.append(trainer.step)

    def on_end(self, trainer: Trainer) -> None:
        self.ended = True


def _record(trainer: Trainer) -> dict[str, list[int]]:
    """The steps each hook of `trainer` fires at, by hook class (ScalarsHook: the event probe here)."""
    fired: dict[str, list[int]] = {}
    for hook in trainer.hooks:
        steps = fired.setdefault(type(hook).__name__, [])

        def fire(trainer: Trainer, real=hook.fire, steps=steps) -> None:
            steps.append(trainer.step)
            real(trainer)

        hook.fire = fire
    return fired


def test_each_hook_fires_at_the_multiples_of_its_interval_and_at_the_end(tmp_path):
    trainer = Trainer(_cfg(tmp_path / "run"), progress=False)
    fired = _record(trainer)
    mine = Recorder(5)
    trainer.hooks.append(mine)
    trainer.fit()
    assert fired == {"LogHook": [4, 8, 12], "MediaHook": [3, 6, 9],  # the final media: finish()
                     "ScalarsHook": [4, 8, 12], "CheckpointHook": [6, 12]}
    assert mine.fired == [5, 10, 12] and mine.ended
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [4, 8, 12]
    assert [r["step"] for r in rows if "events/level2_f1" in r] == [4, 8, 12]
    assert [r["step"] for r in rows if "eval/rollout_ssim" in r] == [3, 6, 9, 12]


def test_a_resumed_run_fires_its_hooks_at_the_steps_of_an_uninterrupted_one(tmp_path):
    whole = Trainer(_cfg(tmp_path / "whole"), progress=False)
    fired_whole = _record(whole)
    mine_whole = Recorder(5)
    whole.hooks.append(mine_whole)
    whole.fit()

    first = Trainer(_cfg(tmp_path / "run"), progress=False)
    first.train_steps(7, run_end=12)  # a kill after step 7: the newest checkpoint is step 6's
    del first
    resumed = Trainer(_cfg(tmp_path / "run"), resume=True, progress=False)
    assert resumed.step == 6
    fired = _record(resumed)
    mine = Recorder(5)
    resumed.hooks.append(mine)
    resumed.fit()
    assert fired == {name: [s for s in steps if s > 6] for name, steps in fired_whole.items()}
    assert mine.fired == [s for s in mine_whole.fired if s > 6] == [10, 12]
    losses = [{r["step"]: r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
               if "loss" in r} for run in (tmp_path / "whole", tmp_path / "run")]
    # step 8's row is the mean of the steps since the resume (7, 8), the others' of the same steps
    assert losses[0].keys() == losses[1].keys() and losses[0][12] == losses[1][12]


def test_a_hook_interval_must_be_a_count_of_steps():
    with pytest.raises(ValueError, match="every"):
        Recorder(-1)
    assert not Recorder(0).due(4, 12) and Recorder(0).due(12, 12)


@pytest.mark.parametrize("where", ["media", "events", "track"])
def test_a_measurement_that_fails_leaves_the_model_in_training_mode(tmp_path, monkeypatch, where):
    import worldmodel.evaluation.tracking as tracking
    import worldmodel.training.trainer as trainer_module

    trainer = Trainer(_cfg(tmp_path / "run", "probes.track_every=4"), progress=False)
    assert trainer.track_source is not None and trainer.event_probe is not None

    def broken(*args, **kwargs):
        raise RuntimeError("measurement failed")

    if where == "media":
        monkeypatch.setattr(trainer_module, "rollout_media", broken)
        call = trainer.media
    elif where == "events":
        monkeypatch.setattr(trainer.model, "observe", broken)
        call = trainer.probe_events
    else:
        monkeypatch.setattr(tracking, "tracking_scores", broken)
        call = trainer.track
    assert trainer.model.training
    with pytest.raises(RuntimeError, match="measurement failed"):
        call()
    assert trainer.model.training


def test_step_metrics_become_floats_only_on_log_steps(tmp_path, monkeypatch):
    import sys

    trainer = Trainer(_cfg(tmp_path / "run", "media_every=0", "probes.event_every=0"), progress=False)
    calls: list[str] = []  # tensors turned into Python numbers by the library (torch's own left out)

    def counted(real):
        def convert(self, *args):
            caller = sys._getframe(1).f_code
            if "/worldmodel/" in caller.co_filename:
                calls.append(caller.co_name)
            return real(self, *args)
        return convert

    for name in ("__float__", "item", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, counted(getattr(torch.Tensor, name)))
    per_step, kinds = [], []
    for _ in range(8):
        calls.clear()
        metrics = trainer.train_step()
        per_step.append([name for name in calls if name in ("loss_and_output", "train_step")])
        kinds.append({type(v).__name__ for k, v in metrics.items() if k.startswith(("kl", "recon"))})
    # off the log steps, the non-finite checks read two values (the loss, the gradient norm); the
    # model's 7 + 3N metrics stay tensors on the device (the input checks' reads are not metrics)
    assert [names for step, names in enumerate(per_step, 1) if step % 4] == [["train_step"] * 2] * 6, per_step
    assert kinds == [{"Tensor"}] * 8
    log = next(hook for hook in trainer.hooks if isinstance(hook, LogHook))
    assert log.window == {}  # train_step alone: the loop feeds the hooks
    calls.clear()
    trainer.train_steps(3, run_end=12)  # steps 9..11: no log
    assert calls.count("host_floats") == 0 and len(log.window["kl"]) == 3
    trainer.train_steps(1, run_end=12)  # step 12: the log, one transfer for the whole window
    assert calls.count("host_floats") == 1 and log.window == {}
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [12] and isinstance(rows[0]["kl/level2"], float)


def test_host_floats_equal_float_of_each_value():
    values = {"a": [torch.tensor(0.1), 2.5, torch.tensor(1e-30, dtype=torch.bfloat16)],
              "b": [torch.tensor(3.0)]}
    assert host_floats(values) == {key: [float(v) for v in vs] for key, vs in values.items()}
    assert host_floats({"c": [1.0]}) == {"c": [1.0]}


def test_the_model_loss_keeps_float_metrics_by_default():
    from tests.conftest import random_frames
    from worldmodel import DLH, DLHConfig

    model = DLH(DLHConfig(levels=2, image_size=16, channels=3, x_dim=16, c_dim=16, d_dim=16, s_dim=4,
                          enc_hidden=(16,), dec_hidden=(16,), state_hidden=(16,), factor_hidden=(8,),
                          conv_depth=4))
    frames = random_frames(2, 4, channels=3)
    torch.manual_seed(0)
    _, floats = model.loss(frames)
    torch.manual_seed(0)
    _, tensors, _ = model.loss_and_output(frames, float_metrics=False)
    assert all(isinstance(v, float) for v in floats.values())
    assert {k: float(v) for k, v in tensors.items()} == floats


def test_training_leaves_torchs_global_random_stream_alone(tmp_path) -> None:
    torch.manual_seed(123)
    state = torch.get_rng_state()
    trainer = Trainer(load_config(None, TINY + [f"out_dir={tmp_path}", "steps=3", "logging.media_every=2",
                                                "probes.event_every=2"]))
    trainer.train_steps(3)
    trainer.finish()
    assert torch.equal(torch.get_rng_state(), state)  # steps, media and probes draw from their own streams
