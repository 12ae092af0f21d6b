"""Record Gymnasium episodes as compressed ``.npz`` files (docs/design.md §4, Dreamer layout).

One file per episode of ``T`` steps, holding ``T + 1`` entries per key:

=============== ================== ==================================================
key             dtype, shape       meaning at index t
=============== ================== ==================================================
``image``       uint8 (T+1,H,W,C)  observation after step t (t=0: after reset)
``action``      float32 (T+1, A)   action that led to step t; zeros at t=0; a
                                   discrete action is stored one-hot
``reward``      float32 (T+1,)     reward of the step into t; 0 at t=0
``is_first``    bool (T+1,)        True at t=0 only
``is_last``     bool (T+1,)        True at t=T only (terminated or truncated)
``is_terminal`` bool (T+1,)        True at t=T only if Gymnasium said ``terminated``
``log_seed``    int64 (T+1,)       the seed of the episode's ``reset`` (the same at
                                   every t; -1 if reset without a seed)
``log_*``       any, (T+1, ...)    extra per-step values (info keys); never trained on
=============== ================== ==================================================

Files are named ``{prefix}_{index:06d}_{T}.npz``; the index is one past the highest
already in the directory, so nothing is overwritten. Each file is written to a
hidden temporary name in the same directory and moved into place with
``os.replace``, so readers never see half a file. Recording again into a directory
continues it: :func:`record_episodes` skips the seeds its episodes were reset with, so
no episode is recorded twice.

Example:
    >>> import tempfile
    >>> import envs
    >>> from envs.pixels import make_pixel_env
    >>> env = make_pixel_env(envs.POINT_TARGET_ID, size=32, max_episode_steps=10)
    >>> paths = record_episodes(env, "random", episodes=2, out_dir=tempfile.mkdtemp(),
    ...                         progress=False)
    >>> [p.name for p in paths]
    ['episode_000000_10.npz', 'episode_000001_10.npz']
    >>> load_episode(paths[0])["image"].shape
    (11, 32, 32, 3)
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from tqdm.auto import tqdm

from envs.policies import Policy, make_policy
from worldmodel.arguments import check_int
from worldmodel.episode_format import EPISODE_KEYS, SEED_KEY, load_episode, save_episode
from worldmodel.files import FolderLock, check_output_folder, remove_stale_temporaries

__all__ = [
    "EPISODE_KEYS",
    "MAX_SEED",
    "RECORDING_FILE",
    "SEED_KEY",
    "EpisodeRecorder",
    "encode_action",
    "load_episode",
    "record_episodes",
    "save_next_episode",
]

MAX_SEED = 2**32 - 1
"""Largest base ``seed`` of :func:`record_episodes`."""
RECORDING_FILE = "recording.json"
"""The settings a folder's episodes were recorded with (:func:`record_episodes`)."""
# what `save_episode` of earlier versions left when killed: `.{name}.npz.{pid}.tmp`
_OLD_TEMPORARY = re.compile(r"^\..+\.npz\.\d+\.tmp$")


# ---------------------------------------------------------------------- actions
def action_size(space: gym.Space) -> int:
    """Length ``A`` of the stored action vector for ``space`` (one-hot for discrete)."""
    if isinstance(space, spaces.Box):
        return int(np.prod(space.shape))
    if isinstance(space, spaces.Discrete):
        return int(space.n)
    if isinstance(space, spaces.MultiDiscrete) and space.nvec.ndim == 1:
        return int(space.nvec.sum())
    if isinstance(space, spaces.MultiBinary) and np.ndim(space.n) == 0:
        return int(space.n)
    raise ValueError(
        f"cannot record actions of space {space}: expected Box, Discrete, 1-D MultiDiscrete "
        f"or 1-D MultiBinary"
    )


def encode_action(space: gym.Space, action: Any) -> np.ndarray:
    """Action -> float32 ``(A,)``: a Box action flattened, a discrete one one-hot."""
    if isinstance(space, spaces.Box):
        vec = np.asarray(action, dtype=np.float32).reshape(-1)
        if vec.shape != (action_size(space),):
            raise ValueError(f"expected an action of shape {space.shape}, got {np.shape(action)}")
        return vec
    if isinstance(space, spaces.Discrete):
        index = int(np.asarray(action).reshape(())) - int(space.start)
        if not 0 <= index < space.n:
            raise ValueError(f"action {action!r} is outside {space}")
        vec = np.zeros(int(space.n), dtype=np.float32)
        vec[index] = 1.0
        return vec
    if isinstance(space, spaces.MultiDiscrete):
        values = np.asarray(action).reshape(-1) - space.start
        parts = []
        for value, n in zip(values, space.nvec):
            if not 0 <= value < n:
                raise ValueError(f"action {action!r} is outside {space}")
            part = np.zeros(int(n), dtype=np.float32)
            part[int(value)] = 1.0
            parts.append(part)
        return np.concatenate(parts)
    if isinstance(space, spaces.MultiBinary):
        return np.asarray(action, dtype=np.float32).reshape(-1)
    action_size(space)  # raises for unsupported spaces
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------- files
def _check_settings(out_dir: Path, settings: dict[str, Any]) -> None:
    """Compare ``settings`` with those stored in ``out_dir`` (a folder being continued) and
    store their union; ValueError naming each setting that differs."""
    import json

    from worldmodel.files import atomic_write_text

    file = out_dir / RECORDING_FILE
    stored: dict[str, Any] = {}
    if file.is_file():
        try:
            stored = json.loads(file.read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"{file}: not readable JSON ({err}); it records the settings of the "
                             f"episodes in {out_dir}: repair or remove it") from None
        if not isinstance(stored, dict):
            raise ValueError(f"{file}: expected a JSON object of recording settings")
    differ = [f"{key} {stored[key]!r} (now {settings[key]!r})" for key in settings
              if key in stored and stored[key] != settings[key]]
    if differ:
        raise ValueError(f"{out_dir} holds episodes recorded with other settings: {', '.join(differ)}; "
                         f"continue it with the same settings ({file}) or record into a new directory")
    if stored != {**stored, **settings}:
        atomic_write_text(file, json.dumps({**stored, **settings}, indent=1) + "\n")


def _remove_temporaries(out_dir: Path) -> None:
    """Remove what killed writers left in ``out_dir`` (call it holding the folder's lock)."""
    stale = remove_stale_temporaries(out_dir)
    for entry in sorted(out_dir.iterdir()) if out_dir.is_dir() else []:
        if _OLD_TEMPORARY.match(entry.name) and entry.is_file():
            entry.unlink(missing_ok=True)
            stale.append(entry)
    if stale:
        warnings.warn(f"removed {len(stale)} temporaries left by interrupted recordings: "
                      f"{', '.join(p.name for p in stale[:3])}{' ...' if len(stale) > 3 else ''}",
                      stacklevel=3)


def _episode_files(out_dir: Path, prefix: str) -> dict[Path, int]:
    """The ``{prefix}_{index}_{T}.npz`` files directly in ``out_dir``, with their index."""
    pattern = re.compile(rf"{re.escape(prefix)}_(\d+)_\d+\.npz")
    files = {}
    with os.scandir(out_dir) as entries:
        for entry in entries:
            match = pattern.fullmatch(entry.name)
            if match:
                files[Path(entry.path)] = int(match.group(1))
    return files


def _next_free_index(out_dir: Path, prefix: str) -> int:
    """One past the highest ``{prefix}_{index}_{T}.npz`` index in ``out_dir`` (0 if none)."""
    return max(_episode_files(out_dir, prefix).values(), default=-1) + 1


def _stored_seed(path: Path) -> int | None:
    """The reset seed stored in an episode file; None for an episode recorded before seeds
    were stored; -1 if it was reset without a seed or is not a readable episode at all
    (neither constrains new seeds; an unreadable file gets a warning naming it)."""
    from worldmodel.npz import READ_ERRORS, open_npz

    try:
        with open_npz(path, "episode .npz file") as archive:
            if SEED_KEY not in archive.files:
                return None if set(EPISODE_KEYS) <= set(archive.files) else -1
            seeds = archive[SEED_KEY]
    except READ_ERRORS as err:
        warnings.warn(f"{path}: not a readable episode file ({' '.join(str(err).split())}); it is left "
                      "as it is, but training on this folder will refuse it: delete or move it", stacklevel=4)
        return -1
    if seeds.ndim != 1 or seeds.size == 0 or seeds.dtype.kind not in "iu":
        return -1
    return int(seeds[0])


def _free_seeds(out_dir: Path, prefix: str, start: int, count: int) -> list[int]:
    """The first ``count`` seeds from ``start`` on that no episode in ``out_dir`` was reset with.

    Raises:
        ValueError: ``out_dir`` holds episodes without a stored seed (recorded before seeds
            were stored), whose seeds therefore cannot be skipped.
    """
    used: set[int] = set()
    unknown: list[Path] = []
    if out_dir.is_dir():
        for path in sorted(_episode_files(out_dir, prefix)):
            seed = _stored_seed(path)
            if seed is None:
                unknown.append(path)
            else:
                used.add(seed)
    if unknown:
        raise ValueError(
            f"{out_dir} already holds {len(unknown)} episode file(s) without a stored seed (e.g. "
            f"{unknown[0].name}, recorded by an older version), so new episodes could repeat them: "
            f"record into a new directory"
        )
    seeds: list[int] = []
    candidate = start
    while len(seeds) < count:
        if candidate not in used:
            seeds.append(candidate)
        candidate += 1
    return seeds


def save_next_episode(
    episode: Mapping[str, np.ndarray], out_dir: str | os.PathLike[str], prefix: str = "episode"
) -> Path:
    """Write ``episode`` atomically as ``out_dir/{prefix}_{index:06d}_{T}.npz``; return the path.

    The episode must be stored exactly in the layout (``validate_episode(exact=True)`` of
    :mod:`worldmodel.episode_format`). The index is the next free one; an existing
    file is never replaced.
    """
    from worldmodel.episode_format import validate_episode

    length = len(validate_episode(episode, exact=True)["image"]) - 1
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    index = _next_free_index(out, prefix)
    final = out / f"{prefix}_{index:06d}_{length}.npz"
    while final.exists():  # a file with another length but this index is fine; this is not
        index += 1
        final = out / f"{prefix}_{index:06d}_{length}.npz"
    return save_episode(final, episode, exact=True)  # atomic: temporary name, then rename


# ---------------------------------------------------------------------- the wrapper
class EpisodeRecorder(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Record every finished episode of an image-observation env to ``out_dir``.

    Stepping the wrapper collects observations, actions, rewards and flags; when an
    episode ends (``terminated or truncated``) it is written with
    :func:`save_next_episode` and its path is put in ``info["episode_path"]`` and
    appended to :attr:`episode_paths`. An episode cut short by ``reset()`` or
    ``close()`` is dropped with a warning.

    Args:
        env: environment whose observations are uint8 images ``(H, W, C)`` or
            ``(H, W)`` (wrap others with :class:`envs.pixels.PixelObservation`), with a
            Box, Discrete, 1-D MultiDiscrete or 1-D MultiBinary action space.
        out_dir: directory for the ``.npz`` files (created if missing).
        info_keys: info entries to store per step as ``log_{key}`` (numeric or bool;
            present in the infos of ``reset`` and of every ``step``).
        prefix: file-name prefix.

    Example:
        >>> import tempfile, gymnasium as gym, envs
        >>> env = EpisodeRecorder(gym.make(envs.POINT_TARGET_ID, max_episode_steps=3),
        ...                       tempfile.mkdtemp(), info_keys=["switched"])
        >>> _ = env.reset(seed=0)
        >>> for _ in range(3):
        ...     *_, info = env.step(env.action_space.sample())
        >>> sorted(load_episode(info["episode_path"]))[:2]
        ['action', 'image']
    """

    def __init__(
        self,
        env: gym.Env,
        out_dir: str | os.PathLike[str],
        info_keys: Sequence[str] = (),
        prefix: str = "episode",
    ) -> None:
        space = env.observation_space
        if not (
            isinstance(space, spaces.Box)
            and space.dtype == np.uint8
            and (len(space.shape) == 3 or len(space.shape) == 2)
        ):
            raise ValueError(
                f"EpisodeRecorder needs uint8 image observations (H, W, C) or (H, W), got {space}; "
                f"wrap the env with envs.pixels.PixelObservation"
            )
        action_size(env.action_space)  # raises ValueError for unsupported action spaces
        if isinstance(info_keys, str):
            raise ValueError(f"info_keys must be a sequence of names, got the string {info_keys!r}")
        if "seed" in info_keys:
            raise ValueError(f"info_keys may not contain 'seed': {SEED_KEY!r} holds the reset seed")
        if not prefix or not re.fullmatch(r"[A-Za-z0-9_.-]+", prefix):
            raise ValueError(f"prefix must be a non-empty file-name part, got {prefix!r}")
        gym.utils.RecordConstructorArgs.__init__(
            self, out_dir=str(out_dir), info_keys=tuple(info_keys), prefix=prefix
        )
        gym.Wrapper.__init__(self, env)
        self.out_dir = Path(out_dir)
        self.info_keys = tuple(info_keys)
        self.prefix = prefix
        self.episode_paths: list[Path] = []
        self._buffer: dict[str, list[Any]] | None = None
        self._seed = -1

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        self._drop_unfinished("reset()")
        obs, info = self.env.reset(seed=seed, options=options)
        self._seed = int(seed) if seed is not None and 0 <= seed <= np.iinfo(np.int64).max else -1
        a = action_size(self.env.action_space)
        self._buffer = {
            "image": [self._image(obs)],
            "action": [np.zeros(a, dtype=np.float32)],
            "reward": [0.0],
            "terminated": [False],
            **{f"log_{key}": [self._info_value(info, key, 0)] for key in self.info_keys},
        }
        return obs, info

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        if self._buffer is None:
            raise gym.error.ResetNeeded("EpisodeRecorder: call reset() before step()")
        encoded = encode_action(self.env.action_space, action)
        obs, reward, terminated, truncated, info = self.env.step(action)
        buf = self._buffer
        t = len(buf["image"])
        buf["image"].append(self._image(obs))
        buf["action"].append(encoded)
        buf["reward"].append(float(reward))
        buf["terminated"].append(bool(terminated))
        for key in self.info_keys:
            buf[f"log_{key}"].append(self._info_value(info, key, t))
        if terminated or truncated:
            path = save_next_episode(self._episode(), self.out_dir, self.prefix)
            self.episode_paths.append(path)
            self._buffer = None
            info = {**info, "episode_path": str(path)}
        return obs, reward, terminated, truncated, info

    def close(self) -> None:
        self._drop_unfinished("close()")
        super().close()

    # ------------------------------------------------------------------ internals
    def _episode(self) -> dict[str, np.ndarray]:
        buf = self._buffer
        assert buf is not None
        n = len(buf["image"])
        is_first = np.zeros(n, dtype=bool)
        is_first[0] = True
        is_last = np.zeros(n, dtype=bool)
        is_last[-1] = True
        episode = {
            "image": np.stack(buf["image"]),  # (T+1, H, W, C)
            "action": np.stack(buf["action"]).astype(np.float32),  # (T+1, A)
            "reward": np.asarray(buf["reward"], dtype=np.float32),  # (T+1,)
            "is_first": is_first,
            "is_last": is_last,
            "is_terminal": np.asarray(buf["terminated"], dtype=bool) & is_last,
            SEED_KEY: np.full(n, self._seed, dtype=np.int64),
        }
        for key in self.info_keys:
            episode[f"log_{key}"] = np.stack(buf[f"log_{key}"])
        return episode

    def _drop_unfinished(self, where: str) -> None:
        if self._buffer is not None and len(self._buffer["image"]) > 1:
            warnings.warn(
                f"EpisodeRecorder: {where} before the episode ended; dropping its "
                f"{len(self._buffer['image']) - 1} recorded steps",
                stacklevel=3,
            )
        self._buffer = None

    @staticmethod
    def _image(obs: Any) -> np.ndarray:
        image = np.asarray(obs, dtype=np.uint8)
        return image[..., None] if image.ndim == 2 else image.copy()

    @staticmethod
    def _info_value(info: Mapping[str, Any], key: str, t: int) -> np.ndarray:
        if key not in info:
            raise ValueError(
                f"EpisodeRecorder: info key {key!r} missing at step {t}; info has {sorted(info)}"
            )
        value = np.asarray(info[key])
        if value.dtype.kind not in "biuf":
            raise ValueError(
                f"EpisodeRecorder: info[{key!r}] must be numeric or bool to be stored, "
                f"got dtype {value.dtype}"
            )
        return value


# ---------------------------------------------------------------------- recording
def record_episodes(
    env: gym.Env,
    policy: Policy | str,
    episodes: int,
    out_dir: str | os.PathLike[str],
    seed: int | None = 0,
    progress: bool = True,
    info_keys: Sequence[str] = (),
    *,
    algo: str | None = None,
    trust_pickle: bool = False,
    settings: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Run ``episodes`` episodes of ``policy`` in ``env`` and write each to ``out_dir``.

    Episode ``i`` starts with ``reset(seed=seeds[i])``, where ``seeds`` are the first
    ``episodes`` integers from ``seed`` on that no episode already in ``out_dir`` was reset
    with (in a new directory: ``seed, seed + 1, ...``). Each file stores its reset seed as
    ``log_seed``, so a second run into the same directory continues with new seeds (and
    new file indices) instead of repeating the first. With ``seed=None`` episodes are
    reset without a seed. ``env`` must end its
    episodes by itself (a time limit; see ``make_pixel_env(max_episode_steps=...)``).
    The env is not closed.

    Args:
        env: image-observation env (see :class:`EpisodeRecorder`).
        policy: callable ``obs -> action``, ``"random"`` or ``"sb3:PATH"``.
        episodes: number of episodes, >= 1.
        out_dir: output directory (created if missing).
        seed: base seed, an int in ``[0, MAX_SEED]``, or None; the random policy is
            seeded with each episode's seed as the episode starts (so a recording continued
            after a kill holds what an uninterrupted one would).
        progress: show a tqdm progress bar.
        info_keys: info entries stored as ``log_{key}``.
        algo, trust_pickle: for ``"sb3:PATH"``, see :func:`envs.policies.load_sb3_policy`.
        settings: how the env was made (``dlh record`` passes env id, size, grayscale, action
            repeat), JSON values. Stored in ``out_dir/recording.json`` together with the image
            shape and action size, and compared when a later run continues the folder.

    Returns:
        The paths of the written files, in order.

    One process records into a folder at a time (a second gets
    :class:`worldmodel.files.FolderInUse` naming the first); temporaries left by a killed
    recording are removed first, and an unreadable episode file gets a warning naming it.

    Raises:
        ValueError: bad arguments; ``out_dir`` holds episodes recorded without a stored
            seed (a new directory is needed then), or recorded with other settings (each
            difference named).
    """
    episodes = check_int(episodes, "episodes", 1)
    if seed is not None:
        seed = check_int(seed, "seed", 0, MAX_SEED, hint="or None")
    check_output_folder(out_dir)
    recorder = EpisodeRecorder(env, out_dir, info_keys=info_keys)
    with FolderLock(out_dir, "recording episodes into it"):
        return _record(recorder, policy, episodes, Path(out_dir), seed, progress, settings, algo,
                       trust_pickle)


def _record(recorder: EpisodeRecorder, policy: Policy | str, episodes: int, out_dir: Path, seed: int | None,
            progress: bool, settings: Mapping[str, Any] | None, algo: str | None, trust_pickle: bool
            ) -> list[Path]:
    """`record_episodes` once it holds the lock of `out_dir`."""
    env = recorder.env
    _remove_temporaries(out_dir)
    shape = recorder.observation_space.shape
    derived = {"image_shape": list(shape) if len(shape) == 3 else [*shape, 1],
               "action_size": action_size(env.action_space)}
    _check_settings(out_dir, {**dict(settings or {}), **derived})
    seeds = None if seed is None else _free_seeds(out_dir, recorder.prefix, int(seed), int(episodes))
    act = make_policy(policy, env, seed if seeds is None else seeds[0], algo=algo, trust_pickle=trust_pickle)
    # the random policy is seeded per episode with the episode's own seed: a recording continued
    # after a kill (its seeds skip those already used) then equals an uninterrupted one
    seed_each = isinstance(policy, str) and policy == "random" and seeds is not None
    paths: list[Path] = []
    with tqdm(total=int(episodes), unit="ep", desc="record", disable=not progress) as bar:
        for i in range(int(episodes)):
            if seed_each:
                env.action_space.seed(seeds[i])  # type: ignore[index]
            obs, _ = recorder.reset(seed=None if seeds is None else seeds[i])
            done, steps, ret = False, 0, 0.0
            while not done:
                obs, reward, terminated, truncated, info = recorder.step(act(obs))
                done = terminated or truncated
                steps += 1
                ret += float(reward)
            paths.append(Path(info["episode_path"]))
            bar.set_postfix(steps=steps, ret=f"{ret:.2f}")
            bar.update()
    return paths
