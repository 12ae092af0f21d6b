"""Policies that drive :func:`envs.recorder.record_episodes`: callables, random, SB3 models.

A policy is any callable ``obs -> action``. :func:`make_policy` also accepts the
strings ``"random"`` and ``"sb3:PATH"`` used by ``dlh record --policy``.
Stable-Baselines3 is imported only when an ``sb3:`` policy is loaded.

An SB3 ``.zip`` holds cloudpickled objects (spaces, schedules, classes) next to a JSON
description of them and the network weights. :func:`load_sb3_policy` never unpickles
them: it reads the JSON and the weights (``torch.load(weights_only=True)``) and rebuilds
the policy network of the algorithm you name from the env's own spaces. SB3's own
loader, which runs the pickles, is used only with ``trust_pickle=True`` (``dlh record
--trust-pickle``), for files you trust.

Example:
    >>> import gymnasium as gym
    >>> env = gym.make("Pendulum-v1")
    >>> policy = make_policy("random", env, seed=0)
    >>> obs, _ = env.reset(seed=0)
    >>> env.action_space.contains(policy(obs))
    True
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import warnings
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from worldmodel.files import one_line

__all__ = ["SB3_ALGORITHMS", "Policy", "load_sb3_policy", "make_policy"]

SB3_ALGORITHMS = ("PPO", "SAC", "TD3", "A2C", "DDPG", "DQN")

Policy = Callable[[Any], Any]
"""``obs -> action`` for a single (non-vectorised) environment."""

_DATA_LIMIT = 64 * 2**20  # bytes of the JSON ``data`` entry; SB3 writes a few kB
_WEIGHTS_LIMIT = 256 * 2**20  # bytes of ``policy.pth``; an Atari CNN policy is ~7 MB
_TRAINING_ONLY_KWARGS = ("optimizer_class", "optimizer_kwargs")  # no effect on actions
_TRUST_HINT = "load only a file you trust with trust_pickle=True (dlh record --trust-pickle)"


def _check_algo(algo: str | None, trust_pickle: bool) -> tuple[str, ...]:
    """The algorithms to try: ``(algo,)``, or all of them for a trusted file without one."""
    if algo is None:
        if trust_pickle:
            return SB3_ALGORITHMS
        raise ValueError(
            f"loading a Stable-Baselines3 model needs its algorithm: pass algo= (dlh record "
            f"--algo), one of {', '.join(SB3_ALGORITHMS)}"
        )
    if not isinstance(algo, str) or algo.upper() not in SB3_ALGORITHMS:
        raise ValueError(f"algo must be one of {', '.join(SB3_ALGORITHMS)} (--algo), got {algo!r}")
    return (algo.upper(),)


# ---------------------------------------------------------------------- the zip, read safely
@dataclasses.dataclass(frozen=True)
class _StoredSpace:
    """What the JSON of a saved space tells without unpickling it (None: not readable)."""

    kind: str | None  # class name: "Box", "Discrete", ...
    shape: tuple[int, ...] | None
    dtype: str | None
    fields: dict[str, Any]

    def describe(self) -> str:
        return f"{self.kind or 'a space'}(shape {self.shape}, {self.dtype})"


def _stored_space(data: dict[str, Any], key: str, where: str) -> _StoredSpace:
    entry = data.get(key)
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: the model's {key!r} is missing or not readable")
    match = re.fullmatch(r"<class '(?:[\w.]+\.)?(\w+)'>", str(entry.get(":type:", "")))
    shape = entry.get("_shape")
    readable_shape = isinstance(shape, list) and all(isinstance(n, int) and n >= 0 for n in shape)
    dtype = entry.get("dtype")
    return _StoredSpace(
        kind=match.group(1) if match else None,
        shape=tuple(shape) if readable_shape else None,
        dtype=dtype if isinstance(dtype, str) else None,
        fields=entry,
    )


def _read_bound(space: _StoredSpace, name: str) -> np.ndarray | None:
    """A Box bound from its printed form (``low_repr`` / ``low``), or None if not readable."""
    size = int(np.prod(space.shape)) if space.shape is not None else None
    for text in (space.fields.get(f"{name}_repr"), space.fields.get(name)):
        if not isinstance(text, str):
            continue
        try:
            values = [float(t) for t in text.replace("[", " ").replace("]", " ").split()]
        except ValueError:  # "..." of a long array, or not numbers
            continue
        if size is not None and len(values) in (1, size):
            return np.broadcast_to(np.asarray(values), (size,))
    return None


def _read_capped(archive: zipfile.ZipFile, name: str, limit: int, where: str) -> bytes:
    """An entry of the zip, refused when its declared or its actual size is over `limit` (a
    zip bomb declares little and unpacks to gigabytes: reading stops at the limit)."""
    too_big = ValueError(f"{where}: its {name!r} entry unpacks to over {limit >> 20} MiB: not a "
                         "Stable-Baselines3 model of a plausible size (refused before reading it all)")
    if archive.getinfo(name).file_size > limit:
        raise too_big
    with archive.open(name) as entry:
        content = entry.read(limit + 1)
    if len(content) > limit:
        raise too_big
    return content


def _read_zip(file: Path, where: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The JSON ``data`` and the ``policy.pth`` state dict of an SB3 zip, without unpickling."""
    import torch

    try:
        with zipfile.ZipFile(file) as archive:
            names = set(archive.namelist())
            for member in ("data", "policy.pth"):
                if member not in names:
                    raise ValueError(f"{where}: not a Stable-Baselines3 model zip (no {member!r} entry)")
            data = json.loads(_read_capped(archive, "data", _DATA_LIMIT, where))
            weights = _read_capped(archive, "policy.pth", _WEIGHTS_LIMIT, where)
    except (OSError, EOFError, NotImplementedError, RuntimeError, UnicodeDecodeError,
            json.JSONDecodeError, zipfile.BadZipFile, zlib.error) as err:
        raise ValueError(f"{where}: not a readable Stable-Baselines3 model zip ({one_line(err)})") from err
    if not isinstance(data, dict):
        raise ValueError(f"{where}: the 'data' entry is not a JSON object")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. about the pickle protocol of a refused file
            state = torch.load(io.BytesIO(weights), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure means: not plain weights
        problem = one_line(err)[:1000]
        raise ValueError(f"{where}: 'policy.pth' is not a plain state dict of tensors ({problem})") from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{where}: 'policy.pth' is not a state dict of tensors")
    return data, state


def _policy_name(algo_class: type, data: dict[str, Any], obs_space: gym.Space, where: str) -> str:
    """The alias ("MlpPolicy", ...) of the stored ``policy_class``, read from its JSON fields;
    chosen by the observation space when the file does not say."""
    from stable_baselines3.common.preprocessing import is_image_space

    aliases: dict[str, type] = algo_class.policy_aliases
    stored = data.get("policy_class")
    if isinstance(stored, str) and stored in aliases:
        return stored
    if isinstance(stored, dict):
        module, init = stored.get("__module__"), stored.get("__init__")
        owner = re.match(r"<function ([\w.]+)\.__init__ at ", init) if isinstance(init, str) else None
        if isinstance(module, str) and owner:
            for alias, cls in aliases.items():
                if cls.__module__ == module and cls.__qualname__ == owner.group(1):
                    return alias
            raise ValueError(
                f"{where}: policy_class is {module}.{owner.group(1)}, not one of "
                f"{algo_class.__name__}'s policies ({', '.join(aliases)}): check algo; a custom "
                f"policy class cannot be rebuilt without unpickling: {_TRUST_HINT}"
            )
    if stored is not None:  # present, but only the pickle says which class it is
        raise ValueError(f"{where}: the policy class is stored only as a pickle; pass --trust-pickle "
                         "(trust_pickle=True) for files you trust")
    if isinstance(obs_space, spaces.Dict):
        return "MultiInputPolicy"
    return "CnnPolicy" if is_image_space(obs_space) else "MlpPolicy"


def _stored_class(text: Any, key: str, where: str) -> type:
    """``activation_fn`` / ``features_extractor_class`` from its printed form, if it is a
    torch activation or one of SB3's feature extractors (nothing is imported by name)."""
    import torch.nn.modules.activation as activations
    from stable_baselines3.common import torch_layers

    known: dict[str, tuple[Any, type]] = {
        "activation_fn": (activations, activations.Module),
        "features_extractor_class": (torch_layers, torch_layers.BaseFeaturesExtractor),
    }
    match = re.fullmatch(r"<class '([\w.]+)\.(\w+)'>", text) if isinstance(text, str) else None
    if match:
        module, base = known[key]
        cls = getattr(module, match.group(2), None)
        if match.group(1) == module.__name__ and isinstance(cls, type) and issubclass(cls, base):
            return cls
    raise ValueError(
        f"{where}: policy_kwargs[{key!r}] is {text!r}; without unpickling only torch.nn "
        f"activations and SB3's own feature extractors can be rebuilt: {_TRUST_HINT}"
    )


def _ints(value: Any, floats: bool = False) -> list[float]:
    """Every int (not bool; with `floats`, every number) inside a JSON value."""
    if isinstance(value, dict):
        return [n for v in value.values() for n in _ints(v, floats)]
    if isinstance(value, (list, tuple)):
        return [n for v in value for n in _ints(v, floats)]
    kinds = (int, float) if floats else int
    return [value] if isinstance(value, kinds) and not isinstance(value, bool) else []


def _check_sizes(kwargs: dict[str, Any], state: dict[str, Any], where: str) -> None:
    """Refuse, before the network is built, ``policy_kwargs`` that ask for more than the stored
    weights hold: a layer wider than any stored tensor's dimension, or an MLP (``net_arch``)
    with more weights than ``policy.pth`` has in all (such a network could never load them, and
    building it could take gigabytes)."""
    import math

    largest = max((max(t.shape, default=1) for t in state.values()), default=0)
    stored = sum(t.numel() for t in state.values())
    for key, value in kwargs.items():
        widths = _ints(value, floats=key == "net_arch")  # 1e6 in net_arch is a width too
        if any(n > largest for n in widths):
            raise ValueError(
                f"{where}: policy_kwargs[{key!r}] asks for {max(widths)} units, but no tensor in "
                f"'policy.pth' has a dimension over {largest}: the settings do not match the stored "
                "weights (refused before building the network)")
        if key == "net_arch" and not isinstance(value, (int, float, str)):
            layers = value.values() if isinstance(value, dict) else [value]
            needed = sum(math.prod(pair) for arch in layers for pair in zip(_ints(arch), _ints(arch)[1:]))
            if needed > stored:
                raise ValueError(f"{where}: policy_kwargs['net_arch'] {value!r} needs {needed:,} weights, "
                                 f"more than the {stored:,} stored in 'policy.pth': the settings do not "
                                 "match the stored weights (refused before building the network)")


def _policy_kwargs(data: dict[str, Any], where: str) -> dict[str, Any]:
    """``policy_kwargs`` from the JSON: plain values as stored; classes only from a short list."""
    stored = data.get("policy_kwargs", {})
    if stored is None:
        return {}
    if not isinstance(stored, dict):
        raise ValueError(f"{where}: policy_kwargs is not readable without unpickling: {_TRUST_HINT}")
    pickled = ":serialized:" in stored
    kwargs = {k: v for k, v in stored.items() if k not in (":type:", ":serialized:")}
    if pickled and not str(stored.get(":type:", "")).startswith("<class 'dict'>"):
        raise ValueError(f"{where}: policy_kwargs is not readable without unpickling: {_TRUST_HINT}")
    for key in _TRAINING_ONLY_KWARGS:
        kwargs.pop(key, None)
    for key, value in kwargs.items():
        if key in ("activation_fn", "features_extractor_class"):
            kwargs[key] = _stored_class(value, key, where)
        elif pickled and isinstance(value, str):  # the printed form of something pickled
            raise ValueError(
                f"{where}: policy_kwargs[{key!r}] exists only in pickled form ({value[:80]!r}): "
                f"{_TRUST_HINT}"
            )
    return kwargs


# ---------------------------------------------------------------------- spaces
def _observation_space(
    env_obs: gym.Space, stored: _StoredSpace, where: str
) -> tuple[gym.Space, tuple[int, ...] | None]:
    """The space to build the policy with, and the shape observations are reshaped to."""
    mismatch = ValueError(f"model {where} observes {stored.describe()}, the env gives {env_obs}")
    if stored.kind is not None and stored.kind != type(env_obs).__name__:
        raise mismatch
    if stored.dtype is not None and env_obs.dtype is not None and stored.dtype != str(env_obs.dtype):
        raise mismatch
    if stored.shape is None or stored.shape == env_obs.shape:
        return env_obs, None
    if not isinstance(env_obs, spaces.Box):
        raise mismatch
    shape = env_obs.shape
    if len(shape) == 3 and stored.shape == (shape[2], shape[0], shape[1]):
        # channel-first image model (SB3's VecTransposeImage); SB3 transposes each obs itself
        low, high = (np.transpose(b, (2, 0, 1)) for b in (env_obs.low, env_obs.high))
        return spaces.Box(low, high, dtype=env_obs.dtype), None
    if np.prod(shape) != np.prod(stored.shape):
        raise mismatch
    low, high = (b.reshape(stored.shape) for b in (env_obs.low, env_obs.high))
    return spaces.Box(low, high, dtype=env_obs.dtype), stored.shape


def _check_action_space(env_act: gym.Space, stored: _StoredSpace, where: str) -> None:
    problem = stored.kind is not None and stored.kind != type(env_act).__name__
    problem |= stored.shape is not None and stored.shape != env_act.shape
    if isinstance(env_act, spaces.Discrete) and "n" in stored.fields:
        problem |= str(stored.fields["n"]) != str(int(env_act.n))
    if isinstance(env_act, spaces.Box) and not problem:
        for name, bound in (("low", env_act.low), ("high", env_act.high)):
            value = _read_bound(stored, name)
            if value is not None and not np.allclose(value, bound.reshape(-1), rtol=1e-6, atol=0):
                raise ValueError(f"model {where} acts in a Box with {name} {value.tolist()}, "
                                 f"the env expects {env_act}")
    if problem:
        raise ValueError(f"model {where} acts in {stored.describe()}, the env expects {env_act}")


# ---------------------------------------------------------------------- loaders
def _load_safely(sb3: Any, file: Path, algo: str, env: gym.Env, where: str) -> tuple[Any, Any]:
    """Rebuild the policy network from JSON and weights; returns (policy, reshape)."""
    from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm

    data, state = _read_zip(file, where)
    algo_class = getattr(sb3, algo)
    _check_action_space(env.action_space, _stored_space(data, "action_space", where), where)
    obs_space, reshape = _observation_space(
        env.observation_space, _stored_space(data, "observation_space", where), where
    )
    name = _policy_name(algo_class, data, obs_space, where)
    kwargs = _policy_kwargs(data, where)
    _check_sizes(kwargs, state, where)
    if issubclass(algo_class, OnPolicyAlgorithm):
        use_sde = data.get("use_sde", False)
        if not isinstance(use_sde, bool):
            raise ValueError(f"{where}: use_sde must be true or false, got {use_sde!r}")
        kwargs["use_sde"] = use_sde
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            policy = algo_class.policy_aliases[name](obs_space, env.action_space, lambda _: 0.0, **kwargs)
            policy.load_state_dict(state)
    except Exception as err:  # noqa: BLE001 - the JSON kwargs may break the constructor anywhere
        raise ValueError(f"{where}: cannot rebuild its {algo} {name} for this env "
                         f"(is it a {algo} model?): {one_line(err)}"[:2000]) from err
    policy.set_training_mode(False)
    return policy, reshape


def _load_pickled(sb3: Any, file: Path, names: tuple[str, ...], env: gym.Env, where: str) -> tuple[Any, Any]:
    """SB3's own loader (runs the file's pickles); returns (model, reshape)."""
    errors = []
    model = None
    for name in names:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                model = getattr(sb3, name).load(file, device="cpu")
                break
            except Exception as err:  # noqa: BLE001 - try the next algorithm
                errors.append(f"{name}: {type(err).__name__}: {one_line(err)}"[:200])
    if model is None:
        raise ValueError(f"could not load {where} as any of {', '.join(names)}: " + "; ".join(errors))
    env_obs, model_obs = env.observation_space, model.observation_space
    env_act, model_act = env.action_space, model.action_space
    if type(env_act) is not type(model_act) or env_act.shape != model_act.shape:
        raise ValueError(f"model {where} acts in {model_act}, the env expects {env_act}")
    reshape: tuple[int, ...] | None = None
    if env_obs.shape != model_obs.shape:
        transposed = (
            env_obs.shape is not None
            and len(env_obs.shape) == 3
            and (model_obs.shape == (env_obs.shape[2], env_obs.shape[0], env_obs.shape[1]))
        )
        if not transposed:
            if np.prod(env_obs.shape or ()) != np.prod(model_obs.shape or ()):
                raise ValueError(f"model {where} observes {model_obs}, the env gives {env_obs}")
            reshape = model_obs.shape
    return model, reshape


def load_sb3_policy(
    path: str | os.PathLike[str], env: gym.Env, algo: str | None = None, *, trust_pickle: bool = False
) -> Policy:
    """Load a saved Stable-Baselines3 model and return ``obs -> action`` (deterministic).

    By default nothing in the file is unpickled: the policy network of ``algo`` is rebuilt
    from ``env``'s observation and action spaces, the policy class and ``policy_kwargs``
    stored as JSON in the zip (classes only if they are torch activations or SB3's own
    feature extractors), and the weights of ``policy.pth`` read with
    ``torch.load(weights_only=True)``. A file whose needed fields exist only in pickled
    form (a custom policy or feature-extractor class, say) is refused.

    If the model was trained on a flattened (or otherwise reshaped) version of the
    env's observation with the same number of elements, observations are reshaped
    to the model's shape before ``predict``; channel-first image models are handled
    by SB3 itself.

    Args:
        path: the ``.zip`` written by ``model.save`` (the ``.zip`` suffix may be left out).
        env: the environment the policy acts in; its spaces must match the model's.
        algo: the algorithm that saved the file, one of :data:`SB3_ALGORITHMS`
            (case-insensitive). Required unless ``trust_pickle``.
        trust_pickle: load with SB3's own ``ALGO.load``, which unpickles (runs code
            from) the file: only for files you trust. Without ``algo`` every algorithm
            is tried in turn.

    Raises:
        ValueError: ``algo`` is missing or unknown, the file is missing or not an SB3
            zip, a needed field is only pickled, or its spaces do not fit ``env``.

    The returned callable has the SB3 object that predicts as its ``model`` attribute
    (the policy network; with ``trust_pickle`` the whole SB3 model).
    """
    names = _check_algo(algo, trust_pickle)
    try:
        import stable_baselines3 as sb3
    except ImportError as err:  # pragma: no cover - sb3 is a test dependency
        raise ValueError("policy 'sb3:PATH' needs stable-baselines3: pip install 'worldmodel[sb3]'") from err
    file = Path(path)
    if not file.is_file():
        file = file.with_name(file.name + ".zip")
        if not file.is_file():
            raise ValueError(f"no Stable-Baselines3 model file at {str(path)!r}")
    where = repr(str(path))
    if trust_pickle:
        model, reshape = _load_pickled(sb3, file, names, env, where)
    else:
        model, reshape = _load_safely(sb3, file, names[0], env, where)

    def policy(obs: Any) -> Any:
        if reshape is not None:
            obs = np.asarray(obs).reshape(reshape)
        action, _ = model.predict(obs, deterministic=True)
        return action

    policy.model = model  # type: ignore[attr-defined]  # for inspection
    return policy


def make_policy(
    policy: Policy | str,
    env: gym.Env,
    seed: int | None = 0,
    *,
    algo: str | None = None,
    trust_pickle: bool = False,
) -> Policy:
    """Turn ``policy`` into ``obs -> action``.

    Args:
        policy: a callable, ``"random"`` (``env.action_space.sample()``, seeded with
            ``seed``) or ``"sb3:PATH"`` (:func:`load_sb3_policy`).
        env: the environment the policy acts in.
        seed: seed of the random policy.
        algo, trust_pickle: passed to :func:`load_sb3_policy` for ``"sb3:PATH"``.
    """
    if callable(policy):
        return policy
    if policy == "random":
        env.action_space.seed(seed)
        return lambda obs: env.action_space.sample()
    if isinstance(policy, str) and policy.startswith("sb3:"):
        return load_sb3_policy(policy[len("sb3:") :], env, algo, trust_pickle=trust_pickle)
    raise ValueError(f"policy must be a callable, 'random' or 'sb3:PATH', got {policy!r}")
