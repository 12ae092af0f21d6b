"""Training diagnostics: per-level gradient norms and update sizes, collapse and frozen-level
warnings, the periodic event F1 on data with known events."""

from __future__ import annotations

import json

import pytest

from tests.test_training import TINY
from worldmodel.training import Trainer, load_config
from worldmodel.training.diagnostics import HealthCheck, ParameterGroups


def test_parameter_groups_cover_every_network_of_every_level():
    from tests.conftest import tiny_model

    model = tiny_model(levels=3, prior_factor="recurrent")
    groups = ParameterGroups(model).groups
    assert {"conv_encoder", "conv_decoder", "level1", "level2", "level3"} <= groups.keys()
    assert {"level2/temporal", "level2/prior", "level2/factor", "level2/factor_cell",
            "level2/posterior", "level2/decoder", "level2/encoder"} <= groups.keys()
    assert "level1/factor" not in groups and "level3/encoder" not in groups
    in_levels = {id(p) for n in (1, 2, 3) for p in groups[f"level{n}"]}
    assert in_levels == {id(p) for p in model.hierarchy.levels.parameters()}


def test_training_logs_per_level_gradients_updates_and_events(tmp_path):
    out = tmp_path / "run"
    cfg = load_config(None, [*TINY, f"out_dir={out}", "steps=20", "log_every=10", "event_every=10",
                             "event_sequences=4", "event_length=12", "media_every=0"])
    Trainer(cfg, progress=False).fit()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "loss" in r]
    for key in ("grad_norm/level1", "grad_norm/level2/temporal", "update/level2", "update/level2/factor",
                "update/conv_encoder", "diag/collapsed", "diag/frozen_levels"):
        assert all(key in r for r in train), key
    assert all(r["update/level1"] > 0 for r in train)
    events = [r for r in rows if "events/level2_f1" in r]
    assert [r["step"] for r in events] == [10, 20]
    assert all(0 <= r["events/level2_f1"] <= 1 for r in events)
    summary = json.loads((out / "summary.json").read_text())
    assert "events/level2_f1_tol1" in summary["final_metrics"]


def test_no_event_probe_without_known_events(tmp_path):
    from worldmodel.training.diagnostics import EventProbe

    class NoEvents:
        def eval_batch_with_events(self, num, length, seed):
            return object(), None

    assert EventProbe.build(NoEvents(), 4, 10, 0) is None


def test_collapse_warns_after_the_warmup_only_once_per_episode():
    check = HealthCheck(levels=2, warmup=100, collapse_kl=0.5)
    collapsed = {"kl/level1": 0.1, "kl/level2": 0.0}
    assert check.check(50, collapsed)["diag/collapsed"] == 1.0  # flagged, not warned, in warm-up
    with pytest.warns(UserWarning, match="posterior collapse"):
        check.check(150, collapsed)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check.check(175, collapsed)  # still the same episode: no second warning
        assert check.check(200, {"kl/level1": 20.0, "kl/level2": 0.0})["diag/collapsed"] == 0.0
    with pytest.warns(UserWarning, match="posterior collapse"):
        check.check(225, collapsed)


def test_frozen_level_warning_names_the_level():
    check = HealthCheck(levels=3, warmup=0, frozen_ratio=0.05)
    metrics = {"kl/level1": 20.0, "kl/level2": 1.0, "kl/level3": 1.0,
               "update/level1": 1e-2, "update/level2": 1e-4, "update/level3": 5e-3}
    with pytest.warns(UserWarning, match="level 2's networks are nearly frozen"):
        flags = check.check(10, metrics)
    assert flags["diag/frozen_levels"] == 1.0


def test_diagnostic_settings_are_checked():
    with pytest.raises(ValueError, match="event_every"):
        load_config(None, ["event_every=-1"])
    with pytest.raises(ValueError, match="event_length"):
        load_config(None, ["event_length=1"])
    with pytest.raises(ValueError, match="frozen_ratio"):
        load_config(None, ["frozen_ratio=2"])
