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


# ---------------------------------------------------------------------------- issue 27
def _alias_bomb(depth: int = 9) -> str:
    """data.options.lam as a chain of aliases: 9**depth numbers from a few hundred bytes."""
    layers = ["&a0 [1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    layers += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, depth)]
    return "data:\n  name: moving_ball\n  options:\n    lam: [" + ", ".join(layers) + "]\n"


def test_yaml_aliases_are_refused_by_every_config_reader(tmp_path, capsys):
    import time

    from conftest import tiny_model

    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(_alias_bomb())
    start = time.perf_counter()
    assert main(["train", "--config", str(bomb), "--set", f"out_dir={tmp_path / 'run'}"]) == 2
    line = _error_line(capsys)
    assert str(bomb) in line and "aliases are not accepted" in line and "line 4" in line
    assert time.perf_counter() - start < 5 and len(line) < 400
    assert main(_args(tmp_path / "run", *QUIET, "steps=[&a [1, 2], *a]")) == 2
    assert "--set 'steps=[&a [1, 2], *a]'" in (line := _error_line(capsys)) and "aliases" in line
    run = tmp_path / "stored"  # a run folder whose stored config.yaml was replaced
    run.mkdir()
    tiny_model().save(run / "model.safetensors")
    (run / "config.yaml").write_text(_alias_bomb())
    for config in ([], ["--config", str(bomb)]):
        assert main(["eval", "--checkpoint", str(run), *config, "--device", "cpu",
                     "--context", "2", "--horizon", "2", "--out", str(tmp_path / "eval")]) == 2
        line = _error_line(capsys)
        assert "aliases are not accepted" in line and str(bomb if config else run / "config.yaml") in line


def test_a_duplicate_yaml_key_is_an_error_naming_it_and_both_lines(tmp_path, capsys):
    config = tmp_path / "twice.yaml"
    config.write_text("steps: 3\nseed: 1\nsteps: 5\n")
    assert main(["train", "--config", str(config), "--set", f"out_dir={tmp_path / 'run'}"]) == 2
    line = _error_line(capsys)
    assert str(config) in line and "duplicate key 'steps' (first at line 1" in line and "line 3" in line
    assert not (tmp_path / "run").exists()


def test_a_huge_number_in_a_config_is_one_line_naming_the_item(tmp_path, capsys):
    assert main(_args(tmp_path / "run", *QUIET, "steps=" + "9" * 5000)) == 2
    line = _error_line(capsys)
    assert line.startswith("dlh train: error: --set 'steps=999") and len(line) < 600


def test_a_huge_value_in_an_error_message_is_cut_short():
    from worldmodel.arguments import brief
    from worldmodel.data.moving_ball import MovingBallOptions
    from worldmodel.data.options import parse_options

    lam = r"data\.options\.lam must be a number, got \[\[1, 1, .*\.\.\."
    with pytest.raises(ValueError, match=lam) as err:
        parse_options(MovingBallOptions, {"lam": [[1] * 10**5] * 10**3}, "moving_ball")
    assert len(str(err.value)) < 300
    assert brief(10**100_000) == "an int of about 100000 digits"


def test_an_allocator_failure_is_the_one_line_out_of_memory_message(tmp_path, capsys, monkeypatch):
    import worldmodel.training as training

    def no_memory(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't "
                           "allocate memory: you tried to allocate 40000000000000 bytes. Error code 12 "
                           "(Cannot "
                           "allocate memory)\nframe #0: c10::Error")

    monkeypatch.setattr(training, "train", no_memory)
    assert main(_args(tmp_path / "run", *QUIET)) == 1
    line = _error_line(capsys)
    assert "out of memory" in line and "40000000000000 bytes" in line and "frame #0" not in line


def test_the_memory_check_sees_the_process_limit_not_only_the_machine():
    import subprocess
    import sys

    code = ("import resource, torch\nfrom worldmodel.validation import available_memory\n"
            "resource.setrlimit(resource.RLIMIT_AS, (4 * 2**30, resource.getrlimit(resource.RLIMIT_AS)[1]))\n"
            "print(available_memory(torch.device('cpu')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert int(out) < 4 * 2**30
