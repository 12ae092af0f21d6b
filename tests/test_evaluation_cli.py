"""`dlh eval`, `dlh rollout` and `dlh analyze` end to end on a tiny run folder, checkpoint
resolution, data-config overrides, and clean errors for bad arguments."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import tiny_config, tiny_model
from worldmodel.cli import main
from worldmodel.data import DataConfig
from worldmodel.evaluation.loading import resolve, resolve_model_file
from worldmodel.training.config import TrainConfig, dump_config


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A minimal training run: config.yaml, model.safetensors and one checkpoint folder."""
    run = tmp_path / "run"
    step = run / "checkpoints" / "step_00000001"
    step.mkdir(parents=True)
    cfg = TrainConfig(model=tiny_config(), out_dir=str(run),
                      data=DataConfig(name="moving_ball", image_size=16, channels=1, seq_len=10,
                                      batch_size=2, options={"lam": 0.1}))
    (run / "config.yaml").write_text(dump_config(cfg))
    model = tiny_model()
    model.save(run / "model.safetensors")
    model.save(step / "model.safetensors")
    (step / "trainer.json").write_text(json.dumps({"step": 1, "config": cfg.to_dict()}))
    return run


def test_eval_end_to_end(run_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    code = main(["eval", "--checkpoint", str(run_dir), "--context", "3", "--horizon", "4", "--samples", "3",
                 "--sequences", "3", "--batch-size", "2", "--seed", "7", "--out", str(out),
                 "--device", "cpu"])
    assert code == 0
    summary = json.loads((out / "eval.json").read_text())
    assert summary["checkpoint"] == str(run_dir / "model.safetensors")
    assert (summary["context"], summary["horizon"], summary["samples"], summary["seed"]) == (3, 4, 3, 7)
    assert summary["ssim_variants"] == ["ssim_gaussian11", "ssim_uniform7"]
    assert summary["selected_by"] == "ssim_gaussian11" and summary["split"] == "test"
    assert summary["data"] == "moving_ball" and summary["data_options"] == {"lam": 0.1}
    assert summary["command"].startswith("dlh eval ") and "--samples 3" in summary["command"]
    assert "--ssim-variants gaussian uniform" in summary["command"]
    assert summary["wall_time_s"] > 0
    for name in ("ssim_gaussian11", "ssim_uniform7", "psnr"):
        assert summary["averages"][name]["mean"] is not None
    rows = list(csv.DictReader((out / "curves.csv").open()))
    assert len(rows) == 4 and rows[0]["frame"] == "3"
    assert set(rows[0]) == {"step", "frame", "ssim_gaussian11", "ssim_uniform7", "psnr", "mse"}
    mean = np.mean([float(r["ssim_gaussian11"]) for r in rows])
    assert mean == pytest.approx(summary["averages"]["ssim_gaussian11"]["mean"], rel=1e-4)
    for name in ("ssim.png", "psnr.png", "best_samples.gif"):
        assert (out / name).stat().st_size > 0
    assert "best of 3" in capsys.readouterr().out


def test_eval_is_reproducible_with_a_seed(run_dir, tmp_path):
    args = ["eval", "--checkpoint", str(run_dir), "--context", "2", "--horizon", "3", "--samples", "2",
            "--sequences", "2", "--device", "cpu"]
    scores = []
    for name in ("a", "b"):
        assert main([*args, "--out", str(tmp_path / name)]) == 0
        scores.append(json.loads((tmp_path / name / "eval.json").read_text())["averages"])
    assert scores[0] == scores[1]


def test_rollout_end_to_end(run_dir, tmp_path):
    out = tmp_path / "rollout"
    code = main(["rollout", "--checkpoint", str(run_dir / "checkpoints" / "step_00000001"), "--context", "2",
                 "--horizon", "3", "--sequences", "2", "--out", str(out), "--device", "cpu"])
    assert code == 0
    import imageio.v3 as iio

    gif = iio.imread(out / "rollout.gif", index=None)
    assert gif.shape[0] == 5  # context + horizon frames
    assert (out / "rollout.mp4").stat().st_size > 0
    info = json.loads((out / "rollout.json").read_text())
    assert info["run_dir"] == str(run_dir) and info["files"] == {"gif": "rollout.gif", "mp4": "rollout.mp4"}


def test_analyze_end_to_end(run_dir, tmp_path, capsys):
    out = tmp_path / "analysis"
    code = main(["analyze", "--checkpoint", str(run_dir), "--sequences", "3", "--batch-size", "2",
                 "--length", "8", "--samples", "3", "--maps", "3", "--out", str(out), "--device", "cpu"])
    assert code == 0
    report = json.loads((out / "analysis.json").read_text())
    assert report["sequences"] == 3 and report["steps"] == 8 and report["levels"] == 3
    assert 1.0 <= report["levels_used"]["mean"] <= 3.0
    assert set(report["kl_per_level"]) == {"level1", "level2", "level3"}
    table3 = report["change_prior"]["level2"]
    assert table3["count"]["change"] + table3["count"]["static"] == 3 * 7  # every t > 0 at level 2
    assert set(report["change_detection"]["level2"]) == {"hit_rate", "false_alarm_rate", "true_change_rate"}
    assert report["files"]["change_maps"] == ["change_map_0.png", "change_map_1.png", "change_map_2.png"]
    assert report["files"]["samples_per_level"] == "samples_per_level.png"
    for name in ("change_map_0.png", "change_map_2.png", "samples_per_level.png", "samples_split.png"):
        assert (out / name).stat().st_size > 0
    assert "levels used" in capsys.readouterr().out


def test_analyze_defaults_to_the_runs_sequence_length_and_out_folder(run_dir):
    assert main(["analyze", "--checkpoint", str(run_dir), "--sequences", "1", "--samples", "1",
                 "--maps", "0", "--device", "cpu"]) == 0
    report = json.loads((run_dir / "analysis" / "analysis.json").read_text())
    assert report["steps"] == 10 and report["files"]["change_maps"] == []


def test_analyze_a_bare_one_level_model_file(tmp_path):
    path = tmp_path / "flat.safetensors"
    tiny_model(levels=1).save(path)
    assert main(["analyze", "--checkpoint", str(path), "--sequences", "2", "--length", "6", "--samples", "2",
                 "--maps", "1", "--device", "cpu"]) == 0
    report = json.loads((tmp_path / "analysis" / "analysis.json").read_text())
    assert report["levels_used"]["mean"] == pytest.approx(1.0) and "change_prior" not in report
    assert report["data_config_from"].startswith("defaults") and "samples_split" not in report["files"]


def test_checkpoint_resolution(run_dir, tmp_path):
    step = run_dir / "checkpoints" / "step_00000001"
    assert resolve_model_file(run_dir) == (run_dir / "model.safetensors", run_dir)
    assert resolve_model_file(step) == (step / "model.safetensors", run_dir)
    assert resolve_model_file(step / "model.safetensors") == (step / "model.safetensors", run_dir)
    (run_dir / "model.safetensors").unlink()  # a run still training: its latest checkpoint
    assert resolve_model_file(run_dir) == (step / "model.safetensors", run_dir)
    with pytest.raises(FileNotFoundError, match="no such"):
        resolve_model_file(tmp_path / "missing")
    bare = tmp_path / "bare.safetensors"
    tiny_model().save(bare)
    resolved = resolve(bare)
    assert resolved.run_dir is None and resolved.data.name == "moving_ball"
    assert (resolved.data.image_size, resolved.data.channels) == (16, 1)


def test_data_overrides(run_dir):
    resolved = resolve(run_dir, overrides=["data.options.lam=0.3"])
    assert resolved.data.options == {"lam": 0.3} and resolved.data.seq_len == 10
    with pytest.raises(ValueError, match="only data"):
        resolve(run_dir, overrides=["steps=3"])
    with pytest.raises(ValueError, match="image_size"):
        resolve(run_dir, overrides=["data.image_size=32"])


def _short_video_run(tmp_path: Path) -> Path:
    """A run over a folder of 6-frame videos."""
    videos = tmp_path / "videos"
    videos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        np.save(videos / f"v{i}.npy", rng.integers(0, 255, (6, 16, 16), dtype=np.uint8))
    run = tmp_path / "short"
    run.mkdir()
    cfg = TrainConfig(model=tiny_config(), data=DataConfig(
        name="video_folder", path=str(videos), image_size=16, channels=1, seq_len=4, batch_size=2,
        options={"test_fraction": 0.5}))
    (run / "config.yaml").write_text(dump_config(cfg))
    tiny_model().save(run / "model.safetensors")
    return run


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--context", "0", "--horizon", "3"], "--context must be > 0"),
        (["--context", "2", "--horizon", "0"], "--horizon must be > 0"),
        (["--context", "2", "--horizon", "3", "--samples", "0"], "--samples must be > 0"),
        (["--context", "2", "--horizon", "3", "--sequences", "0"], "--sequences must be > 0"),
    ],
)
def test_eval_rejects_bad_arguments(run_dir, tmp_path, capsys, extra, message):
    assert main(["eval", "--checkpoint", str(run_dir), "--out", str(tmp_path / "x"), *extra]) == 2
    assert message in capsys.readouterr().err


def test_window_longer_than_the_data_is_a_clean_error(tmp_path, capsys):
    run = _short_video_run(tmp_path)
    args = ["--checkpoint", str(run), "--context", "4", "--horizon", "3", "--out", str(tmp_path / "o")]
    assert main(["eval", *args, "--samples", "1", "--sequences", "1"]) == 2
    err = capsys.readouterr().err
    assert "dlh eval: error" in err and "7 frames" in err and "longest" in err
    assert main(["rollout", *args]) == 2
    assert "7 frames" in capsys.readouterr().err
    # a window that fits works on the same data
    assert main(["eval", "--checkpoint", str(run), "--context", "2", "--horizon", "3", "--samples", "1",
                 "--sequences", "1", "--out", str(tmp_path / "ok")]) == 0


def test_missing_checkpoint_is_a_clean_error(tmp_path, capsys):
    assert main(["analyze", "--checkpoint", str(tmp_path / "nope")]) == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_bad_run_config_or_trainer_json_names_the_file(run_dir, tmp_path):
    (run_dir / "config.yaml").write_text("data: {name: [moving_ball\n")
    with pytest.raises(ValueError, match=r"config\.yaml: invalid YAML.*line"):
        resolve(run_dir)
    folder = tmp_path / "bare_run"
    folder.mkdir()
    tiny_model().save(folder / "model.safetensors")
    (folder / "trainer.json").write_text('{"step": 3, "config": {')  # torn by a kill
    with pytest.raises(ValueError, match=r"trainer\.json: not valid JSON"):
        resolve(folder / "model.safetensors")
    assert main(["analyze", "--checkpoint", str(folder / "model.safetensors")]) == 2
