"""Holes an outside probe found in `agents` (issue #10): NaN in JSON reports, the library
importing its CLI."""

from __future__ import annotations

import argparse
import ast
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

import envs
from agents.cli import add_agent_parsers
from tests.conftest import tiny_model

REPO = Path(__file__).resolve().parents[1]


def strict_json(text: str):
    """json.loads that refuses NaN / Infinity, as every other JSON reader does."""

    def refuse(name: str):
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def test_agent_eval_json_writes_null_for_non_finite_values(tmp_path: Path, monkeypatch, capsys) -> None:
    model = tiny_model(levels=2, channels=3, action_dim=2, reward_head=True)
    monkeypatch.setattr("worldmodel.load", lambda path, map_location="cpu": model)

    def fake_evaluate(*args, **kwargs):
        return {
            "agent": {"returns": [1.0], "mean": 1.0, "std": 0.0},
            "random": {"returns": [float("-inf")], "mean": float("-inf"), "std": float("nan")},
            "plan_ms": 1.0, "plan_ms_std": 0.0, "filtered_change_rate": [1.0, float("nan")],
            "imagined_change_rate": [], "episodes": 1, "steps": 2,
            "reward_r2_filtered": float("nan"), "reward_r2_imagined": float("inf"),
            "reward_mae_filtered": 0.5, "reward_mae_imagined": float("nan"),
        }

    monkeypatch.setattr("agents.evaluate.evaluate_agent", fake_evaluate)
    parser = argparse.ArgumentParser(prog="dlh")
    add_agent_parsers(parser.add_subparsers(dest="command", required=True))
    report_path = tmp_path / "report.json"
    args = parser.parse_args(["agent-eval", "--checkpoint", str(tmp_path / "model.safetensors"), "--env",
                              envs.POINT_TARGET_ID, "--episodes", "1", "--json", str(report_path),
                              "--no-progress"])
    assert args.func(args) == 0
    text = report_path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    report = strict_json(text)
    assert report["reward_r2_filtered"] is None and report["reward_r2_imagined"] is None
    assert report["random"]["mean"] is None and report["filtered_change_rate"] == [1.0, None]
    assert report["reward_mae_filtered"] == 0.5 and report["planner"] == "cem"
    assert "nan" in capsys.readouterr().out  # the printed summary still shows the value


def test_json_text_writes_null_for_nan_and_infinity() -> None:
    from worldmodel.reports import json_text  # what agent-eval/agent-ppo/the loop write

    assert strict_json(json_text({"a": [math.nan, 1.5], "b": {"c": math.inf}})) == {
        "a": [None, 1.5], "b": {"c": None}}


def test_library_modules_do_not_import_the_cli() -> None:
    for path in (REPO / "agents").glob("*.py"):
        if path.name in ("cli.py", "__init__.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                module = ("." * node.level) + (node.module or "")
                assert module not in (".cli", "agents.cli"), f"{path.name} imports {module}"
    code = (
        "import sys, agents.loop, agents.evaluate, agents.mpc, agents.planners; "
        "assert 'agents.cli' not in sys.modules, 'agents.cli imported by the library'; "
        "from agents import add_agent_parsers; import agents.cli; "
        "assert add_agent_parsers is agents.cli.add_agent_parsers; "
        "assert 'add_agent_parsers' in __import__('agents').__all__"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_unknown_attribute_of_agents_is_an_attribute_error() -> None:
    import agents

    with pytest.raises(AttributeError, match="no_such_name"):
        agents.no_such_name  # noqa: B018
