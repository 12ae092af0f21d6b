"""Learning in imagination: a trained DLH as a Gymnasium vector environment (the "dream").

:class:`DreamVecEnv` runs B imagined rows of one world model in lockstep. ``reset`` starts
each row from a state the model filtered on real context frames (windows of recorded episodes,
the episode source the trainer reads); ``step(actions)`` advances every row by one batched
``model.imagine`` step, so the static upper levels are reused as in planning. What a policy
sees is what :class:`agents.sb3.DLHFeatureWrapper` gives it in the real env —
``model.features(state)`` (F,) float32 — so a policy trained in the dream acts in reality
unchanged:

    >>> dream = DreamVecEnv("runs/pendulum/model.safetensors", "data/pendulum", num_envs=64)
    >>> obs, info = dream.reset(seed=0)                     # (64, F) float32
    >>> obs, reward, terminated, truncated, info = dream.step(dream.action_space.sample())

* reward: the reward head's mean prediction for the imagined step (a model without a reward
  head is refused);
* terminated: the continue head's probability below `termination_threshold` (never without
  a continue head); truncated: the row has imagined `horizon` frames since its reset;
* autoreset: Gymnasium's modes (``metadata["autoreset_mode"]``): next-step (the default),
  same-step (``info["final_obs"]``) or disabled (``reset(options={"reset_mask": rows})``);
* `observation="pixels"`: the decoded frame, uint8 (H, W, C) like ``envs.make_pixel_env``;
* `jump_level=n`: a *jumpy* step — the action is held and the row imagined until level n
  changes (or `max_jump` frames); the reward is summed over the frames covered, their
  number is ``info["frames"]``.

Determinism: the start states come from a pool of `starts` filtered windows drawn with the
constructor's `seed`; ``reset(seed=s)`` seeds which pool entries the rows take and the
imagination noise. The dream keeps its own torch random stream (swapped in around every model
call), so a policy or anything else drawing from torch's global generator does not change it.

:class:`DreamEnv` is the one-row view as a plain ``gym.Env`` (Gymnasium's and SB3's
``check_env`` run on it); :class:`DreamSB3VecEnv` adapts a same-step DreamVecEnv to SB3's
``VecEnv`` (``terminal_observation``, ``TimeLimit.truncated``).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space
from torch import Tensor

from envs.recorder import RECORDING_FILE, action_size, encode_action
from worldmodel import DLH, HierarchicalState, fastpath, load
from worldmodel.arguments import check_int
from worldmodel.data.episodes import EpisodeSource
from worldmodel.fastpath import one_rollout

ModelLike = DLH | str | os.PathLike
EpisodesLike = EpisodeSource | str | os.PathLike
OBSERVATIONS = ("features", "pixels")
_FILTER_CHUNK = 256  # windows filtered at once while building the start pool


def _as_model(model: ModelLike) -> DLH:
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        return load(path / "model.safetensors" if path.is_dir() else path)
    if not isinstance(model, DLH):
        raise ValueError(
            f"model must be a worldmodel.DLH or the path of a saved one, got {type(model).__name__}"
        )
    return model


def recorded_settings(path: str | os.PathLike) -> dict[str, Any]:
    """The ``recording.json`` of an episode folder (`dlh record`'s settings: env, size, ...), or {}."""
    file = Path(path) / RECORDING_FILE
    if not file.is_file():
        return {}
    try:
        stored = json.loads(file.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{file}: not readable JSON ({err})") from None
    return stored if isinstance(stored, dict) else {}


def env_action_space(env_id: str) -> gym.Space:
    """The action space of the Gymnasium env `env_id` (made once and closed)."""
    import envs  # noqa: F401 - registers worldmodel/PointTarget-v0

    try:
        env = gym.make(env_id)
    except (gym.error.Error, ModuleNotFoundError, ImportError) as err:
        raise ValueError(
            f"cannot make env {env_id!r} to read its action space: {err}; pass action_space="
        ) from err
    try:
        return env.action_space
    finally:
        env.close()


def _assign_rows(state: HierarchicalState, rows: Tensor, part: HierarchicalState) -> HierarchicalState:
    """`state` with its rows `rows` (K,) replaced by the K rows of `part`."""
    out = {}
    for f in fields(HierarchicalState):
        old, new = getattr(state, f.name), getattr(part, f.name)
        if isinstance(old, list):
            out[f.name] = [o.index_copy(0, rows, n) for o, n in zip(old, new)]
        else:
            out[f.name] = old.index_copy(0, rows, new)
    return HierarchicalState(**out)



class _StaticLevelHead:
    """A head MLP (reward or continue) whose first layer's work on levels >= 2 is reused.

    The first layer's pre-activation is Σ_n W_n f_n + b over the levels' features f_n = (s^n, d^n).
    An upper level is static at most imagined steps and its (s, d) are then copied exactly, so
    W_n f_n is kept per row and recomputed only for the rows whose f_n changed (compared exactly:
    changes, resets and rows of another batch all count). The kept products belong to the
    weights they were made with: the key is the weight's identity, storage and version counter
    and fastpath's optimiser/load generation, so training the model between dream phases (the
    Dyna loop) recomputes them. The sums run in another order than one matmul: the result equals
    ``head(features)`` to float rounding (≈ 1e-7 relative), not bit for bit.
    """

    def __init__(self, head: torch.nn.Module, widths: list[int]) -> None:
        self.head = head
        self.first = head._linears[0]
        bounds = np.cumsum([0, *widths])
        self.slices = [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
        self.kept: list[tuple[Tensor, Tensor] | None] = [None] * len(widths)
        self.blocks: list[Tensor] = []
        self.lower_t = torch.empty(0)
        self.key: tuple | None = None

    def _key(self) -> tuple:
        w = self.first.weight
        return fastpath._GENERATION[0], id(w), w.data_ptr(), w._version

    def __call__(self, features: Tensor) -> Tensor:
        key = self._key()
        if key != self.key:  # new weights: their per-level blocks, contiguous (a strided block
            self.kept = [None] * len(self.slices)  # costs a third more in the matmul)
            self.blocks = [self.first.weight.detach()[:, part].contiguous() for part in self.slices]
            self.lower_t = self.blocks[0].t().contiguous()  # (in, out): addmm's fastest layout
            self.key = key
        upper: Tensor | None = None
        for n, part in enumerate(self.slices[1:], start=1):
            f = features[:, part]
            kept = self.kept[n]
            bias = self.first.bias if n == 1 else None  # the bias rides with level 2's part
            if kept is None or kept[0].shape != f.shape:
                product = torch.nn.functional.linear(f, self.blocks[n], bias)
            else:
                rows = (f != kept[0]).any(1).nonzero().squeeze(1)
                product = kept[1]
                if len(rows):
                    fresh = torch.nn.functional.linear(f[rows], self.blocks[n], bias)
                    product.index_copy_(0, rows, fresh)  # ours alone: made by this head
            self.kept[n] = (f.clone(), product)
            upper = product if upper is None else upper + product
        assert upper is not None  # levels >= 2
        h = torch.addmm(upper, features[:, self.slices[0]], self.lower_t)
        linears = self.head._linears
        for linear in linears[1:]:
            h = torch.nn.functional.linear(torch.nn.functional.elu(h), linear.weight, linear.bias)
        return h


class DreamVecEnv(VectorEnv):
    """B imagined rows of a trained DLH as a Gymnasium ``VectorEnv``; see the module docstring.

    Args:
        model: a DLH with a reward head and actions, or the path of a saved one (a run folder
            holding ``model.safetensors`` too). Used as it is: the dream never trains it nor
            changes its mode; every call runs under ``torch.inference_mode``.
        episodes: recorded episodes (an :class:`EpisodeSource`, or a folder of ``.npz`` files
            read like the trainer reads them, split `split`) to draw context windows from.
        num_envs: B, the number of imagined rows (>= 1).
        horizon: a row is truncated after this many imagined frames (>= 1).
        context: real frames filtered into each start state (>= 1; no longer than the
            longest episode).
        observation: "features" (``Box(-inf, inf, (F,), float32)``, as DLHFeatureWrapper)
            or "pixels" (the decoded frame, ``Box(0, 255, (H, W, C), uint8)``).
        action_space: the action space of one row; default: that of `env_id`, else of the
            env named in the folder's ``recording.json``. Must encode to the model's
            ``action_dim`` (Box flattened, Discrete one-hot). Box actions are clipped to it.
        env_id: the env the episodes must come from (checked against ``recording.json``).
        autoreset_mode: an :class:`AutoresetMode` or its value ("NextStep", "SameStep",
            "Disabled").
        jump_level: None (one frame per step) or a level n in 2..N: a step holds the action
            and imagines until level n changes, at most `max_jump` frames.
        max_jump: the most frames one jumpy step covers (>= 1).
        termination_threshold: terminated where the continue head's probability is below it.
        sample_e: sample the change flags e^n (True, as in planning) or take their mode.
        starts: size of the pool of filtered start states (default max(num_envs, 256)).
        split: which split of an episode folder to read ("train", "test", or None for all).
        seed: seeds the start pool (which windows, the filtering noise) and the streams of
            the first reset when it gets no seed.

    Raises:
        ValueError: naming the argument, for a model without reward head or actions, B <= 0,
            episodes whose actions do not fit the model or that were recorded from another env,
            an action space of another size, or any other bad argument.
    """

    def __init__(
        self,
        model: ModelLike,
        episodes: EpisodesLike,
        num_envs: int = 16,
        *,
        horizon: int = 15,
        context: int = 10,
        observation: str = "features",
        action_space: gym.Space | None = None,
        env_id: str | None = None,
        autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
        jump_level: int | None = None,
        max_jump: int = 8,
        termination_threshold: float = 0.5,
        sample_e: bool = True,
        starts: int | None = None,
        split: str | None = "train",
        seed: int = 0,
    ) -> None:
        self.num_envs = check_int(num_envs, "num_envs", 1, hint="the number of imagined rows B")
        self.model = model = _as_model(model)
        cfg = model.config
        if model.reward_head is None:
            raise ValueError(
                "the dream needs predicted rewards: this model has no reward head (train it with "
                "DLHConfig(reward_head=True), --set model.reward_head=true)"
            )
        if cfg.action_dim < 1:
            raise ValueError("the dream needs a model that takes actions: this one has action_dim=0")
        widths = [cfg.level_s_dim(n) + cfg.level_d_dim(n) for n in range(1, cfg.levels + 1)]

        def head(module: torch.nn.Module | None) -> Any:
            if module is None or cfg.levels < 2 or not hasattr(module, "_linears"):
                return module
            return _StaticLevelHead(module, widths)

        self._reward_head, self._continue_head = head(model.reward_head), head(model.continue_head)
        self.horizon = check_int(horizon, "horizon", 1)
        self.context = check_int(context, "context", 1)
        if observation not in OBSERVATIONS:
            raise ValueError(f"observation must be one of {OBSERVATIONS}, got {observation!r}")
        self.observation = observation
        try:
            self.autoreset_mode = AutoresetMode(autoreset_mode)
        except ValueError:
            raise ValueError(
                f"autoreset_mode must be one of {[m.value for m in AutoresetMode]}, got {autoreset_mode!r}"
            ) from None
        if jump_level is not None:
            if cfg.levels < 2:
                raise ValueError(
                    f"jump_level={jump_level!r}: jumpy steps wait for a change of level 2 or above, "
                    "this model has one level"
                )
            jump_level = check_int(
                jump_level,
                "jump_level",
                2,
                cfg.levels,
                hint=f"a level above the first of this {cfg.levels}-level model, or None",
            )
        self.jump_level = jump_level
        self.max_jump = check_int(max_jump, "max_jump", 1)
        threshold = termination_threshold
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
            raise ValueError(f"termination_threshold must be a number in [0, 1], got {threshold!r}")
        self.termination_threshold = float(threshold)
        if not isinstance(sample_e, bool):
            raise ValueError(f"sample_e must be True or False, got {sample_e!r}")
        self.sample_e = sample_e
        self.pool_size = check_int(starts, "starts", 1) if starts is not None else max(self.num_envs, 256)
        self.seed_value = check_int(seed, "seed", 0)
        self.source, recorded = self._episodes(episodes, split)
        self.env_id = self._check_env_id(env_id, recorded)
        if action_space is None:
            if self.env_id is None:
                raise ValueError(
                    "action_space: give the action space of the recorded env (or env_id=); the "
                    "episodes carry no recording.json naming their env"
                )
            action_space = env_action_space(self.env_id)
        if not isinstance(action_space, gym.Space):
            raise ValueError(f"action_space must be a gymnasium Space, got {type(action_space).__name__}")
        if action_size(action_space) != cfg.action_dim:
            raise ValueError(
                f"action_space {action_space} encodes to actions of size {action_size(action_space)}, "
                f"the model takes actions of size {cfg.action_dim}"
            )
        if max(self.source.lengths) < self.context:
            raise ValueError(
                f"context={self.context} is longer than the longest episode "
                f"({max(self.source.lengths)} frames): lower context"
            )

        self.single_action_space = action_space
        self.action_space = batch_space(action_space, self.num_envs)
        if observation == "features":
            self.single_observation_space = spaces.Box(-np.inf, np.inf, (cfg.feature_dim,), np.float32)
        else:
            shape = (cfg.image_size, cfg.image_size, cfg.channels)
            self.single_observation_space = spaces.Box(0, 255, shape, np.uint8)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.metadata = {"autoreset_mode": self.autoreset_mode, "render_modes": []}
        self.render_mode = None

        self._pool: HierarchicalState | None = None
        self._pool_features: Tensor | None = None
        self._pool_np = np.random.default_rng([self.seed_value, 25])
        self._pool_torch = torch.Generator().manual_seed(self.seed_value).get_state()
        self._torch_state: Tensor | None = None  # the dream's own CPU random stream
        self._cuda_state: Tensor | None = None
        self._state: HierarchicalState | None = None
        self._features: Tensor | None = None  # (B, F) of the current states
        self._t = np.zeros(self.num_envs, np.int64)  # frames imagined since each row's reset
        self._needs_reset = np.zeros(self.num_envs, bool)  # next-step autoreset

    # ------------------------------------------------------------------ set-up
    def _episodes(self, episodes: EpisodesLike, split: str | None) -> tuple[EpisodeSource, dict[str, Any]]:
        cfg = self.model.config
        recorded: dict[str, Any] = {}
        if isinstance(episodes, (str, os.PathLike)):
            recorded = recorded_settings(episodes)
            source = EpisodeSource.from_directory(episodes, cfg.image_size, cfg.channels, split=split)
            where = f"the episodes at {os.fspath(episodes)}"
        elif isinstance(episodes, EpisodeSource):
            source, where = episodes, "the episodes"
        else:
            raise ValueError(
                f"episodes must be an EpisodeSource or a folder of episode .npz files, "
                f"got {type(episodes).__name__}"
            )
        if source.num_episodes == 0:
            raise ValueError("episodes: the source holds no episodes")
        if source.action_dim != cfg.action_dim:
            env = f" (recorded from {recorded['env']!r})" if "env" in recorded else ""
            raise ValueError(
                f"{where}{env} have actions of size {source.action_dim}, the model takes actions "
                f"of size {cfg.action_dim}: episodes of another env than the model was trained on"
            )
        return source, recorded

    def _check_env_id(self, env_id: str | None, recorded: dict[str, Any]) -> str | None:
        stored = recorded.get("env")
        if env_id is not None and not isinstance(env_id, str):
            raise ValueError(f"env_id must be a Gymnasium id (str), got {env_id!r}")
        if env_id is not None and stored is not None and stored != env_id:
            raise ValueError(
                f"the episodes were recorded from {stored!r} (their {RECORDING_FILE}), not from "
                f"env_id={env_id!r}: episodes of another env"
            )
        return env_id if env_id is not None else stored

    @contextlib.contextmanager
    def _own_rng(self) -> Iterator[None]:
        """Run model calls on the dream's own torch random stream, leaving the global one as it was."""
        device = self.model.device
        outside = torch.get_rng_state()
        if self._torch_state is None:
            self._torch_state = torch.Generator().manual_seed(int(self.np_random.integers(2**62))).get_state()
        torch.set_rng_state(self._torch_state)
        cuda = device.type == "cuda"
        if cuda:
            outside_cuda = torch.cuda.get_rng_state(device)
            if self._cuda_state is not None:
                torch.cuda.set_rng_state(self._cuda_state, device)
            else:
                torch.cuda.manual_seed(int(torch.randint(2**62, ())))
        try:
            with torch.inference_mode():
                yield
        finally:
            self._torch_state = torch.get_rng_state()
            torch.set_rng_state(outside)
            if cuda:
                self._cuda_state = torch.cuda.get_rng_state(device)
                torch.cuda.set_rng_state(outside_cuda, device)

    def refresh_starts(self) -> None:
        """(Re)build the pool of start states: `starts` windows of `context` real frames, filtered.

        Call it after the model's weights change (the Dyna loop does); rows already running
        finish their episodes from the states they have.
        """
        model = self.model
        batch = self.source.sample(self._pool_np, self.pool_size, self.context)
        saved, self._torch_state = self._torch_state, self._pool_torch
        try:
            with self._own_rng():
                parts = []
                for lo in range(0, self.pool_size, _FILTER_CHUNK):
                    rows = slice(lo, lo + _FILTER_CHUNK)
                    frames = batch.frames[rows].to(model.device)
                    actions = batch.actions[rows].to(model.device)
                    parts.append(model.observe(frames, actions).state)
                pool = (
                    parts[0]
                    if len(parts) == 1
                    else HierarchicalState(
                        **{
                            f.name: (
                                [torch.cat(v, 0) for v in zip(*[getattr(p, f.name) for p in parts])]
                                if isinstance(getattr(parts[0], f.name), list)
                                else torch.cat([getattr(p, f.name) for p in parts], 0)
                            )
                            for f in fields(HierarchicalState)
                        }
                    )
                )
                self._pool_features = model.features(pool)
        finally:
            self._pool_torch, self._torch_state = self._torch_state, saved
        self._pool = pool

    def _draw(self, count: int) -> Tensor:
        """Indices (count,) into the start pool, drawn with the env's generator."""
        if self._pool is None:
            self.refresh_starts()
        index = self.np_random.integers(0, self.pool_size, count)
        return torch.as_tensor(index, device=self.model.device)

    # ------------------------------------------------------------------ Gymnasium API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        """Start every row (or the rows of ``options["reset_mask"]``) from a filtered real state.

        Returns the observations of all B rows and an info dict ({"frames": zeros}).
        """
        if seed is not None:
            seed = check_int(seed, "seed", 0)
        mask = None
        if options is not None:
            if not isinstance(options, dict):
                raise ValueError(f"options must be a dict or None, got {type(options).__name__}")
            mask = options.get("reset_mask")
        if mask is not None:
            mask = np.asarray(mask)
            if mask.dtype != np.bool_ or mask.shape != (self.num_envs,) or not mask.any():
                raise ValueError(
                    f"options['reset_mask'] must be a bool array of shape ({self.num_envs},) with "
                    f"at least one True, got {mask.dtype} {mask.shape}"
                )
            if self._state is None:
                raise ValueError(
                    "options['reset_mask'] resets some rows: call reset() once for all rows first"
                )
        super().reset(seed=seed)
        if seed is not None or self._torch_state is None:
            start = seed if seed is not None else int(self.np_random.integers(2**62))
            self._torch_state = torch.Generator().manual_seed(start).get_state()
            self._cuda_state = None
        with self._own_rng():
            if mask is None:
                index = self._draw(self.num_envs)
                self._state = self._pool.index(index)
                self._features = self._pool_features[index]
                self._t[:] = 0
                self._needs_reset[:] = False
            else:
                self._reset_rows(np.flatnonzero(mask))
            obs = self._observe(self._state, self._features)
        return obs, {}

    def _reset_rows(self, rows: np.ndarray) -> None:
        """Replace the states of `rows` by fresh draws from the pool (inside `_own_rng`)."""
        index = self._draw(len(rows))
        if len(rows) == self.num_envs:  # every row (rows in step): no scatter
            self._state, self._features = self._pool.index(index), self._pool_features[index]
        else:
            where = torch.as_tensor(rows, device=self.model.device)
            self._state = _assign_rows(self._state, where, self._pool.index(index))
            self._features = self._features.index_copy(0, where, self._pool_features[index])
        self._t[rows] = 0
        self._needs_reset[rows] = False

    def _observe(self, state: HierarchicalState, features: Tensor) -> np.ndarray:
        """The observations (B, ...) of `state`: features, or decoded uint8 frames (B, H, W, C)."""
        if self.observation == "features":
            return features.float().cpu().numpy()
        frames = self.model.decode(state)  # (B, C, H, W) in [0, 1]
        return (frames * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()

    def encode_actions(self, actions: Any) -> Tensor:
        """Batched actions of `action_space` -> (B, A) float32 on the model's device.

        Box actions must have shape (B, *shape) and finite values (clipped to the bounds);
        Discrete ones shape (B,) inside the space; other spaces are encoded row by row.
        """
        space, batch = self.single_action_space, self.num_envs
        if isinstance(space, spaces.Box):
            array = np.asarray(actions, dtype=np.float32)
            want = (batch, *space.shape)
            if array.shape != want:
                raise ValueError(
                    f"actions: expected shape {want} (num_envs={batch}, action space {space}), "
                    f"got {np.shape(actions)}"
                )
            if not np.isfinite(array).all():
                raise ValueError("actions: contain NaN or infinity")
            array = np.clip(array, space.low, space.high).reshape(batch, -1)
            return torch.as_tensor(array, device=self.model.device)
        if isinstance(space, spaces.Discrete):
            array = np.asarray(actions)
            if array.shape != (batch,) or array.dtype.kind not in "iu":
                raise ValueError(
                    f"actions: expected {batch} integers (num_envs={batch}, action space {space}), "
                    f"got {array.dtype} {array.shape}"
                )
            index = array.astype(np.int64) - int(space.start)
            if (index < 0).any() or (index >= space.n).any():
                raise ValueError(f"actions: outside {space}: {array.tolist()[:8]}")
            return (
                torch.nn.functional.one_hot(torch.as_tensor(index), int(space.n))
                .float()
                .to(self.model.device)
            )
        rows = list(actions)
        if len(rows) != batch:
            raise ValueError(f"actions: expected {batch} actions (num_envs), got {len(rows)}")
        array = np.stack([encode_action(space, a) for a in rows])
        return torch.as_tensor(array, device=self.model.device)

    def _advance(self, actions: Tensor) -> tuple[HierarchicalState, Tensor, Tensor, Tensor, np.ndarray]:
        """Imagine every row one frame (or, jumpy, until its level change): (state, features,
        summed reward (B,), terminated (B,) bool tensor, frames (B,) int)."""
        model, batch = self.model, self.num_envs
        state = self._state
        if self.jump_level is None:
            state, features, _ = self._imagine_one(state, actions)
            reward = self._reward(features)
            return state, features, reward, self._terminal(features), np.ones(batch, np.int64)
        # jumpy: hold each row's action and imagine until level `jump_level` changes
        device, level = model.device, self.jump_level - 1
        features = self._features.clone()
        reward = torch.zeros(batch, device=device)
        terminated = torch.zeros(batch, dtype=torch.bool, device=device)
        frames = np.zeros(batch, np.int64)
        active = np.ones(batch, bool)
        for _ in range(self.max_jump):
            rows = np.flatnonzero(active)
            every = len(rows) == batch
            where = None if every else torch.as_tensor(rows, device=device)
            part = state if every else state.index(where)
            new, feats, changed = self._imagine_one(part, actions if every else actions[where])
            ended = self._terminal(feats)
            if every:
                state, features, reward = new, feats, reward + self._reward(feats)
                terminated = ended
            else:
                state = _assign_rows(state, where, new)
                features = features.index_copy(0, where, feats)
                reward = reward.index_add(0, where, self._reward(feats))
                terminated = terminated.index_copy(0, where, ended)
            frames[rows] += 1
            stop = (changed[:, level] | ended).cpu().numpy() | (self._t[rows] + frames[rows] >= self.horizon)
            active[rows[stop]] = False
            if not active.any():
                break
        return state, features, reward, terminated, frames

    def _imagine_one(
        self, state: HierarchicalState, actions: Tensor
    ) -> tuple[HierarchicalState, Tensor, Tensor]:
        """One imagined step of every row of `state` with `actions` (B, A): (state, features (B, F),
        e (B, N) bool) — what ``model.imagine(state, 1, actions[:, None])`` computes (the same step
        function and noise, tests/test_dream_env.py), without checking again, at every step, a
        state the dream made itself (that walks every tensor: ≈ 1 ms a step at B = 1000)."""
        hierarchy = self.model.hierarchy
        with one_rollout():
            carry, levels = hierarchy.imagine_step(hierarchy.carry(state), actions, self.sample_e, 1.0)
        state = carry.state
        features = torch.cat([x for s, d in zip(state.s, state.d) for x in (s, d)], -1)  # = model.features
        return state, features, torch.stack([level.changed for level in levels], 1)

    def _reward(self, features: Tensor) -> Tensor:
        """The reward head's mean (B,) (``model.predict_reward`` on features the dream made; the
        first layer's part on static upper levels reused, `_StaticLevelHead`)."""
        return self._reward_head(features).squeeze(-1)

    def _terminal(self, features: Tensor) -> Tensor:
        if self.model.continue_head is None:
            return torch.zeros(features.shape[0], dtype=torch.bool, device=features.device)
        probability = torch.sigmoid(self._continue_head(features).squeeze(-1))  # model.predict_continue
        return probability < self.termination_threshold

    def step(self, actions: Any) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """One batched imagined step of every row: (obs, reward (B,) float64, terminated (B,) bool,
        truncated (B,) bool, info {"frames": (B,) int, ...}).

        Next-step autoreset: a row that ended on the previous step is reset instead (its action
        ignored; reward 0, not terminated or truncated, frames 0).
        """
        if self._state is None:
            raise ValueError("step before reset: call reset() first")
        encoded = self.encode_actions(actions)
        with self._own_rng():
            state, features, reward, ended, frames = self._advance(encoded)
            self._state, self._features = state, features
            self._t += frames
            rewards = reward.double().cpu().numpy()
            terminated = ended.cpu().numpy()
            truncated = (self._t >= self.horizon) & ~terminated
            info: dict[str, Any] = {}
            mode = self.autoreset_mode
            if mode == AutoresetMode.NEXT_STEP and self._needs_reset.any():
                rows = np.flatnonzero(self._needs_reset)
                self._reset_rows(rows)
                rewards[rows], terminated[rows], truncated[rows], frames[rows] = 0.0, False, False, 0
            done = terminated | truncated
            obs = self._observe(self._state, self._features)
            if mode == AutoresetMode.SAME_STEP and done.any():
                rows = np.flatnonzero(done)
                final = np.full(self.num_envs, None, dtype=object)
                for i in rows:
                    final[i] = obs[i]  # views of this array: the fresh observations go to a copy
                final_frames = np.where(done, frames, 0)
                info.update(
                    {
                        "final_obs": final,
                        "_final_obs": done.copy(),
                        "final_info": {"frames": final_frames, "_frames": done.copy()},
                        "_final_info": done.copy(),
                    }
                )
                self._reset_rows(rows)
                if len(rows) == self.num_envs:
                    obs = self._observe(self._state, self._features)
                else:
                    where = torch.as_tensor(rows, device=self.model.device)
                    obs = obs.copy()
                    obs[rows] = self._observe(self._state.index(where), self._features[where])
            elif mode == AutoresetMode.NEXT_STEP:
                self._needs_reset = done.copy()
        info.update({"frames": frames, "_frames": np.ones(self.num_envs, bool)})
        return obs, rewards, terminated, truncated, info

    @property
    def state(self) -> HierarchicalState | None:
        """The HierarchicalState (B rows) of the current imagined steps (None before reset)."""
        return self._state

    def close_extras(self, **kwargs: Any) -> None:
        self._state = self._features = None
        self._pool = self._pool_features = None

    def __repr__(self) -> str:
        jump = f", jump_level={self.jump_level}, max_jump={self.max_jump}" if self.jump_level else ""
        return (
            f"DreamVecEnv(num_envs={self.num_envs}, horizon={self.horizon}, context={self.context}, "
            f"observation={self.observation!r}, env_id={self.env_id!r}{jump})"
        )


class DreamEnv(gym.Env):
    """One imagined row as a plain ``gym.Env`` (a :class:`DreamVecEnv` with B = 1, no autoreset).

    Takes the keyword arguments of :class:`DreamVecEnv` (without `num_envs` and
    `autoreset_mode`); episodes end with ``terminated`` or ``truncated`` at the horizon and the
    caller resets, as with any Gymnasium env. ``info["frames"]``: frames the step covered.
    """

    metadata = {"render_modes": []}

    def __init__(self, model: ModelLike, episodes: EpisodesLike, **kwargs: Any) -> None:
        for name in ("num_envs", "autoreset_mode"):
            if name in kwargs:
                raise ValueError(
                    f"DreamEnv is one row without autoreset: {name} is not an option (use DreamVecEnv)"
                )
        self.dream = DreamVecEnv(model, episodes, 1, autoreset_mode=AutoresetMode.DISABLED, **kwargs)
        self.observation_space = self.dream.single_observation_space
        self.action_space = self.dream.single_action_space

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        super().reset(seed=seed)
        obs, _ = self.dream.reset(seed=seed, options=options)
        return obs[0], {"frames": 0}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        space = self.action_space
        batched = np.asarray(action)[None] if isinstance(space, (spaces.Box, spaces.Discrete)) else [action]
        obs, reward, terminated, truncated, info = self.dream.step(batched)
        return (
            obs[0],
            float(reward[0]),
            bool(terminated[0]),
            bool(truncated[0]),
            {"frames": int(info["frames"][0])},
        )

    def close(self) -> None:
        self.dream.close()


__all__ = ["DreamVecEnv", "DreamEnv", "OBSERVATIONS", "env_action_space", "recorded_settings"]
