"""`dlh` ends errors a user can act on with one line on stderr and a non-zero status, for
every sub-command; a bug still raises (with its traceback)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch
from test_training import _args

from worldmodel.cli import main

QUIET = ["media_every=0", "event_every=0", "steps=2", "checkpoint_every=2"]


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines, "nothing on stderr"
    assert lines[-1].startswith("dlh "), lines[-1]
    return lines[-1]


def test_out_pointing_at_a_file_names_it(tmp_path, capsys):
    target = tmp_path / "a_file"
    target.write_text("x")
    assert main(_args(tmp_path / "unused", *QUIET) + ["--out", str(target)]) == 2
    line = _error_line(capsys)
    assert str(target) in line and "not a folder" in line


def test_a_read_only_out_dir_names_the_folder_and_the_reason(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    real_mkdir = Path.mkdir

    def read_only(self, *args, **kwargs):
        if str(self).startswith(str(out)):
            raise PermissionError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    assert main(_args(out, *QUIET)) == 1
    line = _error_line(capsys)
    assert str(out) in line and os.strerror(errno.EROFS) in line


def test_an_unreadable_data_folder_names_it(tmp_path, capsys, monkeypatch):
    import worldmodel.training.trainer as trainer_module

    data = tmp_path / "videos"

    def unreadable(cfg, split="train"):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(data))

    monkeypatch.setattr(trainer_module, "build_source", unreadable)
    assert main(_args(tmp_path / "run", *QUIET)) == 1
    line = _error_line(capsys)
    assert f"{data}: Permission denied" in line


@pytest.mark.parametrize("failure", ["oserror", "torch"])
def test_a_full_disk_names_the_file_and_leaves_no_temporaries(tmp_path, capsys, monkeypatch, failure):
    out = tmp_path / "run"

    def full(*args, **kwargs):
        if failure == "oserror":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", full)
    assert main(_args(out, *QUIET)) == 1
    line = _error_line(capsys)
    assert str(out / "checkpoints" / "step_00000002" / "optimizer.pt") in line
    assert (os.strerror(errno.ENOSPC) if failure == "oserror" else "write failed") in line
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]


def test_a_full_disk_while_logging_metrics_names_the_file(tmp_path, capsys, monkeypatch):
    real_open = Path.open

    def full(self, mode="r", *args, **kwargs):
        if self.name == "metrics.jsonl" and "a" in mode:  # a full disk's error names no file
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_open(self, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "open", full)
    assert main(_args(tmp_path / "run", *QUIET, "log_every=1")) == 1
    line = _error_line(capsys)
    assert str(tmp_path / "run" / "metrics.jsonl") in line and os.strerror(errno.ENOSPC) in line


def test_yaml_errors_name_the_config_file_or_the_set_item(tmp_path, capsys):
    bad = tmp_path / "broken.yaml"
    bad.write_text("optim:\n  lr: 1e-3\n steps: 4\n")
    assert main(["train", "--config", str(bad), "--set", f"out_dir={tmp_path / 'run'}"]) == 2
    line = _error_line(capsys)
    assert str(bad) in line and "line 3" in line
    assert main(_args(tmp_path / "run", *QUIET, "model.levels=[1")) == 2
    assert "--set 'model.levels=[1'" in _error_line(capsys)


def test_yaml_errors_of_other_sub_commands_are_one_line(tmp_path, capsys):
    from conftest import tiny_model

    model_file = tmp_path / "model.safetensors"
    tiny_model().save(model_file)
    bad = tmp_path / "broken.yaml"
    bad.write_text("data: {name: moving_ball\n")
    assert main(["eval", "--checkpoint", str(model_file), "--config", str(bad), "--device", "cpu",
                 "--context", "2", "--horizon", "2"]) == 2
    assert "invalid YAML" in _error_line(capsys)


@pytest.mark.parametrize("value", ["-1", "0"])
def test_bad_threads_name_the_setting(tmp_path, capsys, value):
    assert main(_args(tmp_path / "run", *QUIET, f"threads={value}")) == 2
    line = _error_line(capsys)
    assert "threads" in line and value in line


def test_out_of_memory_is_one_line(tmp_path, capsys, monkeypatch):
    import worldmodel.training as training

    def no_memory(*args, **kwargs):
        raise MemoryError()

    monkeypatch.setattr(training, "train", no_memory)
    assert main(_args(tmp_path / "run", *QUIET)) == 1
    assert "out of memory" in _error_line(capsys)


def test_a_bug_still_raises(tmp_path, monkeypatch):
    import worldmodel.training as training

    def bug(*args, **kwargs):
        raise KeyError("internal")

    monkeypatch.setattr(training, "train", bug)
    with pytest.raises(KeyError):
        main(_args(tmp_path / "run", *QUIET))


def test_training_with_media_prints_no_sdl_noise_on_a_headless_machine(tmp_path):
    """TensorBoard's add_video imports moviepy, which starts pygame's SDL: without a display or
    a sound card its default drivers printed "error: XDG_RUNTIME_DIR is invalid ..." and ALSA
    errors into every `dlh train` log. The CLI defaults SDL to its dummy drivers."""
    import subprocess
    import sys

    from test_training import TINY

    env = {k: v for k, v in os.environ.items()
           if k not in ("SDL_AUDIODRIVER", "SDL_VIDEODRIVER", "XDG_RUNTIME_DIR", "DISPLAY")}
    cmd = [sys.executable, "-m", "worldmodel.cli", "train", "--no-progress"]
    for item in [*TINY, "steps=2", "log_every=1", "media_every=1", f"out_dir={tmp_path / 'run'}"]:
        cmd += ["--set", item]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    assert "XDG_RUNTIME_DIR" not in done.stderr and "ALSA" not in done.stderr, done.stderr[-2000:]
    assert list((tmp_path / "run").rglob("events.out.tfevents.*")), "no TensorBoard log written"
