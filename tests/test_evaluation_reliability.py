"""Issue 18 for the evaluation commands: a `latest` pointer leading out of the run, a truncated
latest checkpoint, horizons that cannot fit in memory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import tiny_config, tiny_model
from worldmodel.cli import main
from worldmodel.data import DataConfig
from worldmodel.evaluation.loading import resolve
from worldmodel.training.config import TrainConfig, dump_config


def make_run(run: Path, steps: tuple[int, ...], seed: int = 0) -> Path:
    """A run folder with config.yaml and checkpoints at `steps` (no final model file)."""
    cfg = TrainConfig(model=tiny_config(), out_dir=str(run),
                      data=DataConfig(name="moving_ball", image_size=16, channels=1, seq_len=10,
                                      batch_size=2))
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(dump_config(cfg))
    for step in steps:
        folder = run / "checkpoints" / f"step_{step:08d}"
        folder.mkdir(parents=True)
        tiny_model(seed=seed + step).save(folder / "model.safetensors")
        (folder / "trainer.json").write_text(json.dumps({"step": step, "config": cfg.to_dict()}))
    (run / "checkpoints" / "latest").write_text(f"step_{max(steps):08d}")
    return run


def test_a_latest_pointer_leading_out_of_the_run_is_ignored(tmp_path):
    run = make_run(tmp_path / "run", (2, 4))
    elsewhere = make_run(tmp_path / "elsewhere", (5,), seed=100)
    (run / "checkpoints" / "latest").write_text("../../elsewhere/checkpoints/step_00000005")
    ignored = r"latest names '\.\./\.\./elsewhere.*not a checkpoint folder of this run"
    with pytest.warns(UserWarning, match=ignored):
        resolved = resolve(run)
    assert resolved.model_file == run / "checkpoints" / "step_00000004" / "model.safetensors"
    assert elsewhere not in resolved.model_file.parents


def test_eval_falls_back_from_a_truncated_latest_checkpoint(tmp_path, capsys):
    run = make_run(tmp_path / "run", (2, 4))
    bad = run / "checkpoints" / "step_00000004" / "model.safetensors"
    bad.write_bytes(bad.read_bytes()[:200])
    with pytest.warns(UserWarning, match=rf"{bad}: .*falling back to the checkpoint before it"):
        resolved = resolve(run)
    assert resolved.model_file == run / "checkpoints" / "step_00000002" / "model.safetensors"
    out = tmp_path / "rollout"
    with pytest.warns(UserWarning, match="falling back"):
        assert main(["rollout", "--checkpoint", str(run), "--context", "2", "--horizon", "2",
                     "--sequences", "1", "--out", str(out), "--device", "cpu"]) == 0
    assert json.loads((out / "rollout.json").read_text())["checkpoint"] == str(
        run / "checkpoints" / "step_00000002" / "model.safetensors")


def test_no_readable_checkpoint_names_each_file(tmp_path, capsys):
    run = make_run(tmp_path / "run", (2, 4))
    for step in (2, 4):
        (run / "checkpoints" / f"step_{step:08d}" / "model.safetensors").write_bytes(b"junk")
    with pytest.warns(UserWarning):
        assert main(["eval", "--checkpoint", str(run), "--context", "2", "--horizon", "2",
                     "--samples", "1", "--sequences", "1", "--device", "cpu"]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "no readable checkpoint" in line and "step_00000002" in line and "step_00000004" in line


def test_eval_refuses_a_horizon_that_cannot_fit_in_memory(tmp_path, capsys, monkeypatch):
    import worldmodel.validation as validation

    run = make_run(tmp_path / "run", (2,))
    monkeypatch.setattr(validation, "available_memory", lambda device: 2**30)
    code = main(["eval", "--checkpoint", str(run), "--context", "10", "--horizon", "100000",
                 "--samples", "2", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "100010 frames (context + horizon) needs about" in err and "GiB" in err


# ---------------------------------------------------------------------------- issue 27
def test_a_run_config_without_data_takes_the_checkpoints_data_section_with_a_warning(tmp_path):
    import yaml

    run = make_run(tmp_path / "run", (2,))
    stored = json.loads((run / "checkpoints" / "step_00000002" / "trainer.json").read_text())
    stored["config"]["data"]["seq_len"] = 7  # the run's own data, not the defaults
    (run / "checkpoints" / "step_00000002" / "trainer.json").write_text(json.dumps(stored))
    tree = yaml.safe_load((run / "config.yaml").read_text())
    del tree["data"]
    (run / "config.yaml").write_text(yaml.safe_dump(tree))
    with pytest.warns(UserWarning, match=r"config\.yaml has no data: section; evaluating on the data of "
                                         r".*step_00000002/trainer\.json"):
        resolved = resolve(run)
    assert resolved.data.seq_len == 7 and resolved.data_origin.endswith("trainer.json")
    tiny_model().save(run / "model.safetensors")  # a run folder without any trainer.json
    (run / "checkpoints" / "step_00000002" / "trainer.json").unlink()
    with pytest.warns(UserWarning, match=r"config\.yaml has no data: section; evaluating on the default"):
        assert resolve(run).data.name == "moving_ball"
