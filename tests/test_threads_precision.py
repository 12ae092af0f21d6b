"""Thread choice on a busy machine, the slowdown warning, and what `precision: auto` picks."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from worldmodel.training import threads as threads_mod
from worldmodel.training import trainer as trainer_mod
from worldmodel.training.threads import SlowdownWatch, busy_cpus, configure_threads


@pytest.fixture
def keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_explicit_threads_are_used_as_configured(keep_threads):
    assert configure_threads(1) == (1, "as configured")
    assert torch.get_num_threads() == 1


def test_default_threads_leave_out_busy_cpus(monkeypatch, keep_threads):
    monkeypatch.setattr(threads_mod, "_available_cpus", lambda: 4)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    chosen = []
    monkeypatch.setattr(torch, "set_num_threads", chosen.append)
    monkeypatch.setattr(threads_mod, "busy_cpus", lambda: 1.2)
    n, why = configure_threads(None)
    assert n == 3 and chosen[-1] == 3
    assert "1.2 of 4 CPUs busy" in why
    monkeypatch.setattr(threads_mod, "busy_cpus", lambda: 0.1)
    assert configure_threads(None) == (4, "one per free core")
    monkeypatch.setattr(threads_mod, "busy_cpus", lambda: 7.0)  # overloaded: still one thread
    assert configure_threads(None)[0] == 1
    monkeypatch.setattr(threads_mod, "busy_cpus", lambda: None)  # no /proc/stat
    assert configure_threads(None) == (4, "one per core (load unknown)")


def test_busy_cpus_reads_proc_stat(monkeypatch):
    samples = iter([(100.0, 400.0), (150.0, 600.0)])  # 50 of 200 jiffies busy
    monkeypatch.setattr(threads_mod, "_cpu_times", lambda: next(samples))
    monkeypatch.setattr(threads_mod.os, "cpu_count", lambda: 2)
    assert busy_cpus(interval=0.0) == pytest.approx(0.5)
    monkeypatch.setattr(threads_mod, "_cpu_times", lambda: None)
    assert busy_cpus(interval=0.0) is None


def test_slowdown_watch_warns_once_after_settling():
    watch = SlowdownWatch(threads=2, factor=3.0, settle=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not watch.update(5.0)  # start-up intervals are ignored
        assert not watch.update(5.0)
        assert not watch.update(0.2)
        assert not watch.update(0.5)  # 2.5×: below the factor
    with pytest.warns(UserWarning, match=r"threads=1.*OMP_WAIT_POLICY=PASSIVE"):
        assert watch.update(0.7)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not watch.update(5.0)  # once only


def test_slowdown_watch_is_silent_with_one_thread():
    watch = SlowdownWatch(threads=1, settle=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        watch.update(0.1)
        assert not watch.update(10.0)


def test_precision_auto(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert trainer_mod.resolve_precision("bf16", cpu) == ("bf16", "as configured")
    assert trainer_mod.resolve_precision("fp32", cuda) == ("fp32", "as configured")
    assert trainer_mod.resolve_precision("auto", cuda)[0] == "bf16"
    monkeypatch.setattr(trainer_mod, "cpu_has_native_bf16", lambda: False)
    assert trainer_mod.resolve_precision("auto", cpu) == ("fp32", "auto: cpu without native bf16")
    monkeypatch.setattr(trainer_mod, "cpu_has_native_bf16", lambda: True)
    # the measured quality decides on CPUs that have bf16 (docs/results.md, "bf16 on CPU")
    precision, why = trainer_mod.resolve_precision("auto", cpu)
    assert precision == "fp32" and why.startswith("auto: CPU (bf16 autocast did not hold quality")


def test_cpu_bf16_detection_reads_cpuinfo(monkeypatch, tmp_path):
    info = tmp_path / "cpuinfo"
    real_open = open

    def fake_open(path, *args, **kwargs):
        return real_open(info if path == "/proc/cpuinfo" else path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", fake_open)
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\n")
    assert not trainer_mod.cpu_has_native_bf16()
    info.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16\n")
    assert trainer_mod.cpu_has_native_bf16()
    info.unlink()
    assert not trainer_mod.cpu_has_native_bf16()


def test_summary_names_precision_and_threads(tmp_path):
    from test_training import TINY

    from worldmodel.training import load_config, train

    out = tmp_path / "run"
    train(load_config(None, [*TINY, "steps=2", "log_every=1", "media_every=0", f"out_dir={out}"]))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["threads"] == 1 and summary["threads_reason"] == "as configured"
    expected = trainer_mod.resolve_precision("auto", torch.device("cpu"))
    assert (summary["precision"], summary["precision_reason"]) == expected
