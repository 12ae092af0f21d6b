"""What the trainer does when things go wrong: resume with changed settings, divergence,
torn or corrupt run files, reruns into old folders, finished runs, stale temporaries, and
training settings that must be rejected up front."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from test_training import TINY, _args

from worldmodel import load
from worldmodel.cli import main
from worldmodel.training import Trainer, TrainingDiverged, load_config
from worldmodel.training.checkpoints import latest_checkpoint

QUIET = ["media_every=0", "event_every=0", "log_every=1"]


def _cfg(out: Path, *extra: str):
    return load_config(None, [*TINY, *QUIET, f"out_dir={out}", *extra])


def _rows(run: Path) -> list[int]:
    """Steps of the training rows (those with a loss) of metrics.jsonl, in file order."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r["step"] for r in rows if "loss" in r]


def read_checkpoint(path: Path):
    from worldmodel.training.checkpoints import read_checkpoint

    return read_checkpoint(path)


def _finite(ckpt: Path) -> bool:
    contents = read_checkpoint(ckpt)
    tensors = list(contents.weights.values())
    tensors += [t for s in contents.optimizer["state"].values() for t in s.values() if torch.is_tensor(t)]
    return all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())


@pytest.fixture(scope="module")
def four_steps(tmp_path_factory) -> Path:
    """A finished 4-step run with checkpoints at steps 2 and 4 (copy it before changing it)."""
    out = tmp_path_factory.mktemp("runs") / "run"
    Trainer(_cfg(out, "steps=4", "checkpoint_every=2"), progress=False).fit()
    return out


def _copy(run: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(run, tmp_path / "run"))


# ---------------------------------------------------------------------------- settings
@pytest.mark.parametrize("item, key", [
    ("optim.lr=.nan", "optim.lr"), ("optim.lr=-1e-3", "optim.lr"), ("optim.lr=.inf", "optim.lr"),
    ("optim.eps=.nan", "optim.eps"), ("optim.eps=0", "optim.eps"),
    ("optim.grad_clip=.nan", "optim.grad_clip"), ("optim.grad_clip=-1", "optim.grad_clip"),
    ("optim.grad_clip=.inf", "optim.grad_clip"), ("optim.beta_max=.nan", "optim.beta_max"),
    ("optim.beta2=.nan", "optim.beta2"), ("optim.beta_warmup=-5", "optim.beta_warmup"),
    ("optim.lr_warmup=-1", "optim.lr_warmup"), ("collapse_kl=.nan", "collapse_kl"),
])
def test_non_finite_or_negative_optimiser_numbers_are_rejected(item, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        load_config(None, [item])


@pytest.mark.parametrize("value", ["0", "-1", "true", "1.5"])
def test_threads_must_be_null_or_a_positive_int(value):
    with pytest.raises(ValueError, match=rf"threads.*{value}|threads.*expected int"):
        load_config(None, [f"threads={value}"])
    assert load_config(None, ["threads=null"]).threads is None
    assert load_config(None, ["threads=2"]).threads == 2


@pytest.mark.parametrize("value", ["''", "'  '"])
def test_an_empty_out_dir_is_rejected(value):
    with pytest.raises(ValueError, match="out_dir"):
        load_config(None, [f"out_dir={value}"])


def test_yaml_syntax_errors_name_the_file_or_the_set_item(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  levels: [1, 2\nsteps: 3\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: not valid YAML.*line \d+"):
        load_config(bad)
    with pytest.raises(ValueError, match=r"--set 'model\.levels=\[1'.*not valid YAML"):
        load_config(None, ["model.levels=[1"])
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00model")
    with pytest.raises(ValueError, match=r"binary\.yaml"):
        load_config(binary)


# ---------------------------------------------------------------------------- resume: settings
def test_resume_changes_sorts_settings_into_free_on_request_and_fixed():
    from worldmodel.training.config import RESUME_FREE, RESUME_ON_REQUEST, resume_changes

    old = load_config(None, [*TINY, "steps=10", "optim.lr=5e-4"]).to_dict()
    new = load_config(None, [*TINY, "steps=20", "log_every=7", "optim.lr=0.05"])
    with pytest.raises(ValueError, match=r"optim\.lr 0\.0005 -> 0\.05 \(pass --set optim\.lr=0\.05"):
        resume_changes(old, new)
    changes = resume_changes(old, new, requested=["optim.lr"])
    assert changes == {"steps": (10, 20), "logging.log_every": (50, 7), "optim.lr": (0.0005, 0.05)}
    assert resume_changes(old, new, requested=["optim"])["optim.lr"] == (0.0005, 0.05)
    for fixed, shown in [("seed=3", "seed 0 -> 3"), ("data.batch_size=2", "data.batch_size 4 -> 2"),
                         ("model.s_dim=4", "model.s_dim 8 -> 4"),
                         ("optim.eps=1e-4", "optim.eps 1e-08 -> 0.0001"),
                         ("data.options.lam=0.1", "data.options.lam (unset) -> 0.1")]:
        changed = load_config(None, [*TINY, "steps=10", fixed])
        with pytest.raises(ValueError, match="cannot change in the middle of a run") as info:
            resume_changes(old, changed, requested=[fixed.split("=")[0]])  # asking does not help
        assert shown in str(info.value)
    assert "optim.lr" in RESUME_ON_REQUEST and "steps" in RESUME_FREE


def test_resume_with_a_changed_seed_or_data_is_an_error_naming_them(four_steps, tmp_path, capsys):
    run = _copy(four_steps, tmp_path)
    args = _args(run, *QUIET, "steps=6", "checkpoint_every=2", "seed=1", "data.seq_len=6") + ["--resume"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "seed 0 -> 1" in err and "data.seq_len 8 -> 6" in err and "step_00000004" in err
    assert latest_checkpoint(run).name == "step_00000004"  # nothing trained


def test_a_requested_lr_is_applied_on_resume_and_recorded(four_steps, tmp_path, capsys):
    run = _copy(four_steps, tmp_path)
    old = read_checkpoint(latest_checkpoint(run)).optimizer["param_groups"][0]
    with pytest.raises(ValueError, match=r"optim\.lr.*--set optim\.lr=0\.05"):
        Trainer(_cfg(run, "steps=6", "optim.lr=0.05"), resume=True, progress=False)
    trainer = Trainer(_cfg(run, "steps=6", "optim.lr=0.05", "checkpoint_every=1"), resume=True,
                      progress=False, requested=["optim.lr", "steps"])
    assert "optim.lr 0.0005 -> 0.05" in capsys.readouterr().out
    groups = trainer.optimizer.param_groups
    assert all(g["lr"] == 0.05 for g in groups) and groups[0]["eps"] == old["eps"]
    trainer.train_steps(1)
    assert trainer.last["lr"] == 0.05
    record = json.loads((run / "resumes.jsonl").read_text().splitlines()[-1])
    assert record["step"] == 4 and record["changes"]["optim.lr"] == [0.0005, 0.05]
    assert record["changes"]["steps"] == [4, 6]
    assert read_checkpoint(latest_checkpoint(run)).optimizer["param_groups"][0]["lr"] == 0.05


def test_memory_dropout_switched_on_at_a_resume_when_asked(four_steps, tmp_path, capsys):
    run = _copy(four_steps, tmp_path)
    asked = r"optim\.memory_dropout 0\.0 -> 0\.3 \(pass --set optim\.memory_dropout"
    with pytest.raises(ValueError, match=asked):
        Trainer(_cfg(run, "steps=6", "optim.memory_dropout=0.3"), resume=True, progress=False)
    trainer = Trainer(_cfg(run, "steps=6", "optim.memory_dropout=0.3"), resume=True, progress=False,
                      requested=["optim.memory_dropout"])
    assert "optim.memory_dropout 0.0 -> 0.3" in capsys.readouterr().out
    assert trainer.schedule_at(4).memory_dropout == 0.3
    trainer.train_steps(1)
    record = json.loads((run / "resumes.jsonl").read_text().splitlines()[-1])
    assert record["changes"]["optim.memory_dropout"] == [0.0, 0.3]


def test_resuming_a_finished_run_trains_nothing(four_steps, tmp_path, capsys):
    run = _copy(four_steps, tmp_path)
    metrics, summary = (run / "metrics.jsonl").read_text(), (run / "summary.json").read_text()
    checkpoints = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert main(_args(run, *QUIET, "steps=4", "checkpoint_every=2") + ["--resume"]) == 0
    assert "already finished at step 4" in capsys.readouterr().out
    assert (run / "metrics.jsonl").read_text() == metrics and (run / "summary.json").read_text() == summary
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == checkpoints
    # raising steps trains on
    assert main(_args(run, *QUIET, "steps=5", "checkpoint_every=2") + ["--resume"]) == 0
    assert _rows(run) == [1, 2, 3, 4, 5]
    assert json.loads((run / "summary.json").read_text())["steps"] == 5


def test_lowering_steps_below_the_checkpoint_is_an_error(four_steps, tmp_path):
    run = _copy(four_steps, tmp_path)
    with pytest.raises(ValueError, match=r"steps=3 is below the step.*step_00000004.*\(4\)"):
        Trainer(_cfg(run, "steps=3", "checkpoint_every=2"), resume=True, progress=False)


# ---------------------------------------------------------------------------- resume: damaged files
def test_a_torn_last_metrics_line_is_dropped_on_resume(four_steps, tmp_path):
    run = _copy(four_steps, tmp_path)
    (run / "checkpoints" / "latest").write_text("step_00000002")
    import shutil

    shutil.rmtree(run / "checkpoints" / "step_00000004")
    (run / "summary.json").unlink()
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 5, "loss": 12.5, "kl/lev')  # killed mid-write
    with pytest.warns(UserWarning, match=r"metrics\.jsonl: dropping its torn last line"):
        Trainer(_cfg(run, "steps=6", "checkpoint_every=2"), resume=True, progress=False).fit()
    assert _rows(run) == [1, 2, 3, 4, 5, 6]


def test_a_bad_metrics_line_in_the_middle_is_an_error_naming_file_and_line(four_steps, tmp_path):
    run = _copy(four_steps, tmp_path)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    lines[1] = lines[1][:10]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"metrics\.jsonl, line 2: not a metrics row"):
        Trainer(_cfg(run, "steps=6", "checkpoint_every=2"), resume=True, progress=False)


def test_bad_json_in_trainer_json_is_named_and_the_previous_checkpoint_used(four_steps, tmp_path):
    run = _copy(four_steps, tmp_path)
    bad = run / "checkpoints" / "step_00000004" / "trainer.json"
    bad.write_text('{"step": 4, "metrics": {')
    with pytest.warns(UserWarning, match=rf"{bad}: not a readable trainer\.json"):
        trainer = Trainer(_cfg(run, "steps=6", "checkpoint_every=2"), resume=True, progress=False)
    assert trainer.step == 2
    # with no readable checkpoint left, the error names the file
    (run / "checkpoints" / "step_00000002" / "trainer.json").write_text("not json")
    with pytest.raises(ValueError, match=r"no readable checkpoint.*step_00000002/trainer\.json"):
        with pytest.warns(UserWarning):
            Trainer(_cfg(run, "steps=6", "checkpoint_every=2"), resume=True, progress=False)


def test_a_truncated_optimizer_file_falls_back_to_the_previous_checkpoint(four_steps, tmp_path):
    run = _copy(four_steps, tmp_path)
    bad = run / "checkpoints" / "step_00000004" / "optimizer.pt"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    with pytest.warns(UserWarning, match=rf"{bad}: not a readable optimizer state.*falling back"):
        trainer = Trainer(_cfg(run, "steps=6", "checkpoint_every=2"), resume=True, progress=False)
    assert trainer.step == 2
    assert (run / "checkpoints" / "corrupt_step_00000004" / "optimizer.pt").is_file()  # set aside
    trainer.fit()
    assert _rows(run) == [1, 2, 3, 4, 5, 6]
    assert [p.name for p in sorted((run / "checkpoints").glob("step_*"))] == [
        "step_00000002", "step_00000004", "step_00000006"]
    assert json.loads((run / "resumes.jsonl").read_text())["skipped"][0].startswith(str(bad))


def test_stale_temporaries_are_removed_when_a_run_starts(four_steps, tmp_path):
    run = _copy(four_steps, tmp_path)
    stale_dir = run / "checkpoints" / ".step_00000006.k2j3_x9q.tmp"
    stale_dir.mkdir()
    (stale_dir / "optimizer.pt").write_bytes(b"half")
    stale_file = run / ".summary.x8f1_2ab.tmp.json"
    stale_file.write_text("{")
    keep = [run / "notes.tmp", run / ".notes.tmp"]  # not named like ours
    for path in keep:
        path.write_text("mine")
    with pytest.warns(UserWarning, match="temporaries left by interrupted writes"):
        Trainer(_cfg(run, "steps=6", "checkpoint_every=2"), resume=True, progress=False)
    assert not stale_dir.exists() and not stale_file.exists() and all(p.exists() for p in keep)


# ---------------------------------------------------------------------------- reruns
def test_a_rerun_into_a_folder_with_metrics_but_no_checkpoint_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 3.0}\n{"step": 2, "loss": 2.5}\n')
    assert main(_args(run, *QUIET, "steps=3", "checkpoint_every=3")) == 2
    err = capsys.readouterr().err
    assert "metrics.jsonl" in err and "--resume" in err
    assert (run / "metrics.jsonl").read_text().count("\n") == 2  # untouched
    # --resume starts it over from step 0, replacing its logs
    with pytest.warns(UserWarning, match="no checkpoint"):
        assert main(_args(run, *QUIET, "steps=3", "checkpoint_every=3") + ["--resume"]) == 0
    assert _rows(run) == [1, 2, 3]


# ---------------------------------------------------------------------------- divergence
def test_a_diverging_run_never_checkpoints_non_finite_state(tmp_path, capsys):
    run = tmp_path / "run"
    args = _args(run, *QUIET, "steps=40", "optim.lr=1e8", "optim.grad_clip=0", "checkpoint_every=5")
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err)
    last = err[-1]
    assert last.startswith("dlh train: error: training diverged:") and "non-finite steps in a row" in last
    checkpoints = sorted((run / "checkpoints").glob("step_*"))
    assert all(_finite(c) for c in checkpoints)
    good = latest_checkpoint(run)
    if good is None:
        assert "no good checkpoint" in last
    else:
        assert f"last good checkpoint is {good}" in last
        model = load(good / "model.safetensors")
        frames = torch.rand(2, 8, 3, 16, 16)
        assert math.isfinite(float(model.loss(frames)[0]))


def test_a_checkpoint_due_during_non_finite_steps_is_postponed(tmp_path, monkeypatch):
    from worldmodel.model import DLH

    trainer = Trainer(_cfg(tmp_path / "run", "steps=8", "checkpoint_every=4"), progress=False)
    real = DLH.loss_and_output

    def nan_at_step_3(self, *args, **kwargs):
        loss, metrics, out = real(self, *args, **kwargs)
        if trainer.step == 3:
            return loss * float("nan"), {**metrics, "loss": float("nan")}, out
        return loss, metrics, out

    monkeypatch.setattr(DLH, "loss_and_output", nan_at_step_3)
    with pytest.warns(UserWarning, match="step 4: checkpoint postponed: the last step was non-finite"):
        trainer.train_steps(6)
    names = [p.name for p in sorted((tmp_path / "run" / "checkpoints").glob("step_*"))]
    assert names == ["step_00000005", "step_00000006"]


def test_non_finite_weights_are_never_checkpointed_nor_saved(tmp_path):
    trainer = Trainer(_cfg(tmp_path / "run", "steps=4", "checkpoint_every=2"), progress=False)
    trainer.train_steps(2)
    with torch.no_grad():
        next(trainer.model.parameters())[0] = float("nan")
    with pytest.warns(UserWarning, match="checkpoint postponed: NaN or inf in weight"):
        assert trainer.checkpoint() is None
    assert latest_checkpoint(tmp_path / "run").name == "step_00000002"
    with pytest.raises(TrainingDiverged, match=r"NaN or inf.*last good checkpoint is .*step_00000002"):
        trainer.finish()
    assert not (tmp_path / "run" / "model.safetensors").exists()


# ---------------------------------------------------------------------------- issue 18
HOLD_LOCK = """
import sys, time
from worldmodel.files import FolderLock
FolderLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(600)
"""


def test_a_second_process_on_a_run_is_refused_naming_the_holder_and_a_killed_one_leaves_no_lock(
        four_steps, tmp_path, capsys):
    import signal
    import subprocess
    import sys

    from worldmodel.files import FolderInUse

    run = _copy(four_steps, tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(FolderInUse, match=rf"{run}: in use by another process \(PID {holder.pid}\)"):
            Trainer(_cfg(run, "steps=6", "checkpoint_every=2"), resume=True, progress=False)
        assert main([*_args(run, *QUIET, "steps=6", "checkpoint_every=2"), "--resume"]) == 1
        assert f"PID {holder.pid}" in capsys.readouterr().err
    finally:
        holder.send_signal(signal.SIGKILL)  # as a killed run: the kernel drops its lock
        holder.wait()
    trainer = Trainer(_cfg(run, "steps=6", "checkpoint_every=2"), resume=True, progress=False)
    assert trainer.step == 4
    trainer.fit()
    assert _rows(run) == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("umask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_atomic_writes_respect_the_umask(tmp_path, umask, file_mode, dir_mode):
    import os
    import stat

    from worldmodel.files import atomic_directory, atomic_write_text

    old = os.umask(umask)
    try:
        written = atomic_write_text(tmp_path / "a.json", "{}")
        folder = atomic_directory(tmp_path / "step_1", lambda tmp: (tmp / "x").write_text("y"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(written.stat().st_mode) == file_mode
    assert stat.S_IMODE(folder.stat().st_mode) == dir_mode


def test_a_trainer_json_step_that_differs_from_its_folder_falls_back(four_steps, tmp_path):
    run = _copy(four_steps, tmp_path)
    info_file = run / "checkpoints" / "step_00000004" / "trainer.json"
    info = json.loads(info_file.read_text())
    info_file.write_text(json.dumps({**info, "step": 3}))
    with pytest.warns(UserWarning, match=r"trainer\.json: its step 3 differs from its folder's name "
                                         r"step_00000004.*falling back"):
        trainer = Trainer(_cfg(run, "steps=6", "checkpoint_every=2"), resume=True, progress=False)
    assert trainer.step == 2


def test_a_non_finite_optimizer_state_falls_back_and_is_never_called_good(four_steps, tmp_path):
    run = _copy(four_steps, tmp_path)
    bad = run / "checkpoints" / "step_00000004" / "optimizer.pt"
    state = torch.load(bad, weights_only=True)
    first = next(iter(state["optimizer"]["state"].values()))
    first["exp_avg_sq"].fill_(float("nan"))
    torch.save(state, bad)
    named = r"NaN or inf in optimizer\['state'\].*exp_avg_sq.*falling back"
    with pytest.warns(UserWarning, match=rf"{bad}: {named}"):
        trainer = Trainer(_cfg(run, "steps=6", "checkpoint_every=2"), resume=True, progress=False)
    assert trainer.step == 2
    assert latest_checkpoint(run).name == "step_00000002"


def test_more_threads_than_cpus_are_lowered_with_a_warning(monkeypatch):
    from worldmodel.training import threads

    monkeypatch.setattr(threads, "_available_cpus", lambda: 2)
    before = torch.get_num_threads()
    try:
        with pytest.warns(UserWarning, match=r"threads=1000 is more than the 2 CPU\(s\)"):
            assert threads.configure_threads(1000) == (2, "threads=1000 lowered to the 2 CPU(s) available")
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------------------- issue 27
def _torch_save_on_a_full_disk(obj, file, *args, **kwargs):
    try:  # as torch's zip writer does: the file's OSError becomes the context of its RuntimeError
        raise OSError(28, "No space left on device")
    except OSError:
        raise RuntimeError("[enforce fail at inline_container.cc:672] unexpected pos 2424 vs 2423") from None


def test_a_full_disk_while_writing_optimizer_pt_names_the_file_and_keeps_the_old_checkpoint(
        four_steps, tmp_path, monkeypatch, capsys):
    import worldmodel.training.checkpoints as checkpoints

    run = _copy(four_steps, tmp_path)
    monkeypatch.setattr(checkpoints.torch, "save", _torch_save_on_a_full_disk)
    assert main([*_args(run, *QUIET, "steps=6", "checkpoint_every=2"), "--resume"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "step_00000006/optimizer.pt: No space left on device" in err
    assert latest_checkpoint(run).name == "step_00000004"
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]


def test_a_writer_error_on_a_folder_without_free_space_is_a_full_disk(tmp_path, monkeypatch):
    import errno
    import shutil

    from worldmodel.files import atomic_write

    def fail(tmp):
        raise RuntimeError("write failed")

    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(100, 100, 0))
    with pytest.raises(OSError) as caught:
        atomic_write(tmp_path / "x.bin", fail)
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(tmp_path / "x.bin")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    with pytest.raises(RuntimeError, match="write failed"):  # with space left: the writer's own error
        atomic_write(tmp_path / "x.bin", fail)


def test_ctrl_c_is_one_line_naming_the_step_and_the_checkpoint_and_resume_is_bit_identical(
        four_steps, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    real_step = Trainer.train_step

    def interrupted_at_step_4(self):
        if self.step == 3:
            raise KeyboardInterrupt
        return real_step(self)

    monkeypatch.setattr(Trainer, "train_step", interrupted_at_step_4)
    assert main(_args(run, *QUIET, "steps=4", "checkpoint_every=2")) == 130
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("dlh train: interrupted at step 3 of 4; the latest checkpoint is ")
    assert "step_00000002" in err and "--resume" in err
    monkeypatch.undo()
    assert main([*_args(run, *QUIET, "steps=4", "checkpoint_every=2"), "--resume"]) == 0
    resumed = load(run / "model.safetensors").state_dict()
    whole = load(four_steps / "model.safetensors").state_dict()
    assert all(torch.equal(resumed[k], whole[k]) for k in whole)


def test_a_second_trainer_on_one_run_in_one_process_is_refused_until_the_first_finishes(tmp_path):
    from worldmodel.files import FolderInUse

    first = Trainer(_cfg(tmp_path / "run", "steps=4", "checkpoint_every=2"), progress=False)
    first.train_steps(2)
    second = Trainer(_cfg(tmp_path / "run", "steps=4", "checkpoint_every=2"), resume=True, progress=False)
    with pytest.raises(FolderInUse, match=r"run: in use by another Trainer of this process that has not "
                                          r"finished; call its finish\(\)"):
        second.fit()
    assert _rows(tmp_path / "run") == [1, 2]  # the second wrote nothing
    first.fit()
    assert _rows(tmp_path / "run") == [1, 2, 3, 4]
    third = Trainer(_cfg(tmp_path / "run", "steps=6", "checkpoint_every=2"), resume=True, progress=False)
    third.train_steps(1)
    del third  # a dropped Trainer does not hold the run
    fourth = Trainer(_cfg(tmp_path / "run", "steps=6", "checkpoint_every=2"), resume=True, progress=False)
    assert fourth.step == 5  # the third checkpointed the end of its block
    fourth.fit()


def test_seq_len_1_trains_with_a_warning_that_nothing_temporal_is_learned(tmp_path):
    with pytest.warns(UserWarning, match=r"data\.seq_len=1: every training window is one frame"):
        Trainer(_cfg(tmp_path / "run", "steps=1", "data.seq_len=1"), progress=False)


def test_a_rollout_context_longer_than_the_windows_is_lowered_with_a_warning(tmp_path):
    from tests.conftest import random_frames
    from worldmodel.data import Batch

    frames = random_frames(2, 4, channels=3)
    with pytest.warns(UserWarning, match=r"logged rollouts use 2 of context \(logging\.rollout_context=1000 "
                                         r"lowered\)"):
        trainer = Trainer(_cfg(tmp_path / "run", "steps=1", "rollout_context=1000"), progress=False,
                          media_batch=Batch(frames=frames))
    assert trainer.media_context == 2


def test_resuming_with_other_level_lr_scales_is_a_clear_error_that_keeps_the_checkpoint(four_steps, tmp_path):
    run = _copy(four_steps, tmp_path)
    with pytest.raises(ValueError, match=r"cannot change in the middle of a run .*optim\.level_lr_scale "
                                         r"None -> \[1\.0, 2\.0\]"):
        Trainer(_cfg(run, "steps=6", "optim.level_lr_scale=[1, 2]"), resume=True, progress=False,
                requested=["optim.level_lr_scale", "steps"])
    assert latest_checkpoint(run).name == "step_00000004"  # not set aside as corrupt


def test_an_optimiser_of_other_groups_is_refused_before_loading(four_steps):
    """The guard behind the config check (a checkpoint that stores no config): a group count that
    differs is a ValueError about the setting, not a corrupt checkpoint to set aside."""
    from worldmodel import DLH
    from worldmodel.training.checkpoints import read_checkpoint, restore
    from worldmodel.training.trainer import level_param_groups

    contents = read_checkpoint(latest_checkpoint(four_steps))
    model = DLH(contents.model_config)
    optimizer = torch.optim.Adam(level_param_groups(model, (1.0, 2.0)), lr=1e-3)
    with pytest.raises(ValueError, match=r"1 parameter group\(s\), this run 3: resume with the same "
                                         r"optim\.level_lr_scale"):
        restore(contents, model, optimizer)
    optimizer = torch.optim.Adam(level_param_groups(model, None), lr=1e-3)
    restore(contents, model, optimizer)
    assert optimizer.param_groups[0]["lr_scale"] == 1.0
