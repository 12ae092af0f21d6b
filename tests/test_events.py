"""Event precision / recall / F1 of change flags against known events (hand-made sequences)."""

import numpy as np
import pytest
import torch

from worldmodel.evaluation.events import event_counts, event_scores, level_event_scores, match_events


def flags(*rows: str) -> np.ndarray:
    """'..x.x' -> bool row; step 0 is ignored by the scores."""
    return np.array([[c == "x" for c in row] for row in rows])


def test_exact_matching_counts_hits_misses_and_false_alarms():
    truth = flags(".x...x..x.")
    pred = flags(".x..x...x.")
    s = event_scores(pred, truth)
    assert (s["tp"], s["fp"], s["fn"]) == (2, 1, 1)
    assert s["precision"] == pytest.approx(2 / 3) and s["recall"] == pytest.approx(2 / 3)
    assert s["f1"] == pytest.approx(2 / 3)


def test_tolerant_matching_is_one_to_one():
    # two predictions around one true change: only one may match it
    s = event_scores(flags("...xxx...."), flags("....x....."), tolerance=1)
    assert (s["tp"], s["fp"], s["fn"]) == (1, 2, 0)
    # one prediction between two true changes: it matches one of them only
    s = event_scores(flags("....x....."), flags("...x.x...."), tolerance=1)
    assert (s["tp"], s["fp"], s["fn"]) == (1, 0, 1)
    # off by one: exact misses it, tolerance 1 finds it, off by two needs tolerance 2
    assert event_scores(flags("..x......."), flags("...x......"))["f1"] == 0.0
    assert event_scores(flags("..x......."), flags("...x......"), tolerance=1)["f1"] == 1.0
    assert event_scores(flags(".x........"), flags("...x......"), tolerance=1)["f1"] == 0.0
    assert event_scores(flags(".x........"), flags("...x......"), tolerance=2)["f1"] == 1.0


def test_greedy_matching_is_maximum():
    # a greedy rule that matched the nearest prediction would take p=4 for t=3 and lose t=5
    assert match_events(np.array([2, 4]), np.array([3, 5]), tolerance=1) == 2
    assert match_events(np.array([4]), np.array([3, 5]), tolerance=1) == 1
    assert match_events(np.array([], dtype=int), np.array([3]), tolerance=1) == 0


def test_step_zero_is_ignored_and_counts_sum_over_sequences():
    truth = flags("x..x.", "x....")
    pred = flags("x..x.", "x.x..")
    assert event_counts(pred, truth) == {"tp": 1, "fp": 1, "fn": 0}


def test_empty_cases():
    nothing = flags("......")
    assert event_scores(nothing, nothing)["f1"] == 1.0  # nothing to find, nothing claimed
    s = event_scores(nothing, flags("..x..."))
    assert (s["precision"], s["recall"], s["f1"]) == (0.0, 0.0, 0.0)
    s = event_scores(flags("..x..."), nothing)
    assert (s["precision"], s["recall"], s["f1"]) == (0.0, 0.0, 0.0)


def test_level_scores_cover_every_upper_level_and_take_tensors():
    truth = torch.tensor(flags("..x...x..."))
    changed = torch.zeros(1, 10, 3, dtype=torch.bool)
    changed[..., 0] = True
    changed[0, [2, 6], 1] = True
    changed[0, 3, 2] = True
    report = level_event_scores(changed, truth)
    assert report["level2"]["exact"]["f1"] == 1.0
    assert report["level3"]["exact"]["f1"] == 0.0 and report["level3"]["tol1"]["tp"] == 1
    assert report["level2"]["change_rate"] == pytest.approx(2 / 9)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="shape"):
        event_scores(flags("..x"), flags("..x.."))
    with pytest.raises(ValueError, match="truth"):
        event_scores(flags("..x"), np.zeros(3))
    with pytest.raises(ValueError, match="0/1"):
        event_scores(flags("..x"), np.array([[0, 2, 0]]))
    with pytest.raises(ValueError, match="tolerance"):
        match_events(np.array([1]), np.array([1]), tolerance=-1)
