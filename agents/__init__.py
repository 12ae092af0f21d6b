"""Agents on the DLH world model: planning in latent space and SB3 on latent features.

- :mod:`agents.planners`: :class:`CEMPlanner` (PlaNet), :class:`MPPIPlanner` (TD-MPC2), the
  :class:`Planner` base and the default :class:`RewardScore`.
- :mod:`agents.mpc`: :class:`LatentMPCAgent` (filter each observation, plan, act).
- :mod:`agents.loop`: :func:`run_planet_loop`, the PlaNet-style train/collect loop.
- :mod:`agents.evaluate`: :func:`evaluate_agent` (returns vs a random policy, planning time,
  per-level change rates).
- :mod:`agents.cli`: ``dlh agent-train`` / ``dlh agent-eval`` (:func:`add_agent_parsers`,
  imported from there on first use: the library modules never import the CLI).
- :mod:`agents.sb3`: :class:`DLHFeatureWrapper`, :class:`DLHFeaturesExtractor` (imports
  stable-baselines3; not imported here).
"""

from typing import Any

from .evaluate import evaluate_agent, evaluate_random
from .loop import run_episode, run_planet_loop
from .mpc import LatentMPCAgent
from .planners import CEMPlanner, MPPIPlanner, Planner, RewardScore, make_planner

__all__ = [
    "CEMPlanner",
    "LatentMPCAgent",
    "MPPIPlanner",
    "Planner",
    "RewardScore",
    "add_agent_parsers",
    "evaluate_agent",
    "evaluate_random",
    "make_planner",
    "run_episode",
    "run_planet_loop",
]


def __getattr__(name: str) -> Any:
    """``agents.add_agent_parsers``, imported from :mod:`agents.cli` when first asked for."""
    if name == "add_agent_parsers":
        from .cli import add_agent_parsers

        return add_agent_parsers
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
