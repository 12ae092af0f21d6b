"""`resume_changes` says so when the stored config does not load in this version."""

from __future__ import annotations

import pytest

from worldmodel.training.config import TrainConfig, resume_changes


def test_an_unloadable_stored_config_is_compared_as_stored_with_a_warning():
    cfg = TrainConfig()
    stored = {**cfg.to_dict(), "retired_knob": 3}
    with pytest.warns(RuntimeWarning, match="does not load in this version.*retired_knob"), \
            pytest.raises(ValueError, match="retired_knob 3 -> \\(unset\\)"):
        resume_changes(stored, cfg, where="old/trainer.json")
