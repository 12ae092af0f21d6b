"""Episodes recorded from Gymnasium environments, in the layout Dreamer-family code uses
(the file format: `worldmodel.episode_format`, whose functions this module re-exports).

Sampled windows lie inside one episode; episodes shorter than ``seq_len`` are skipped (with
one warning that counts them).

Without train/ and test/ sub-folders the last ``test_fraction`` of the episodes (by sorted
file name) form the test split. Copies of one episode — files with the same arrays, or
reset with the same seed — count as one episode and are kept on one side, so the splits
never share an episode.

Example::

    >>> source = EpisodeSource(image_size=64, channels=3, action_dim=2)
    >>> source.add_episode(episode)          # e.g. from an online RL loop
    >>> batch = source.sample(np.random.default_rng(0), 16, 50)
"""

from __future__ import annotations

import dataclasses
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from worldmodel.data.base import (
    Batch,
    DatasetNotFoundError,
    SequenceSource,
    check_batch_args,
    not_found,
    prepare_video,
    sample_windows,
    split_dir,
    split_files,
    videos_to_frames,
)
from worldmodel.data.options import check_float, set_field
from worldmodel.data.video_io import READ_ERRORS, read_many
from worldmodel.episode_format import (
    EPISODE_KEYS,
    SEED_KEY,
    load_episode,
    save_episode,
    validate_episode,
)

if TYPE_CHECKING:
    from worldmodel.data.config import DataConfig

_HOW = (
    "episodes needs a folder of episode .npz files (image, action, reward, is_first, is_last, "
    "is_terminal), e.g. recorded from a Gymnasium environment with "
    "worldmodel.data.episodes.save_episode."
)


@dataclasses.dataclass(frozen=True)
class EpisodeOptions:
    """Options of ``episodes`` (``data.options``).

    Attributes:
        test_fraction: without train/ and test/ sub-folders, the last fraction of the
            episodes (by sorted file name; copies of one episode count once and stay
            together) form the test split.
    """

    test_fraction: float = 0.1

    def __post_init__(self) -> None:
        set_field(self, "test_fraction", check_float("test_fraction", self.test_fraction, 0, 1))




def _identity(path: Path) -> tuple[tuple[Any, ...], int | None]:
    """What makes two files the same episode: the CRC-32 and size of each layout array (from
    the zip directory, nothing decompressed) and the stored reset seed (None if absent or -1)."""
    try:
        with zipfile.ZipFile(path) as archive:
            infos = {info.filename: info for info in archive.infolist()}
            content = tuple((k, infos[f"{k}.npy"].CRC, infos[f"{k}.npy"].file_size) for k in EPISODE_KEYS)
            seed = None
            if f"{SEED_KEY}.npy" in infos:
                with archive.open(f"{SEED_KEY}.npy") as handle:
                    seeds = np.lib.format.read_array(handle, allow_pickle=False)
                if seeds.ndim == 1 and seeds.size and seeds.dtype.kind in "iu" and seeds[0] >= 0:
                    seed = int(seeds[0])
    except READ_ERRORS:  # unreadable: a group of its own; loading it names the problem
        return (str(path),), None
    return content, seed


def split_episode_files(files: list[Path], split: str, test_fraction: float) -> list[Path]:
    """The files of ``split``: the last ``test_fraction`` of the distinct episodes are test.

    Files holding the same arrays, or recorded from a reset with the same seed, are one
    episode: the group goes to the side of its first file (by sorted name), so no episode
    is on both sides. Without copies this is :func:`~worldmodel.data.base.split_files`.
    """
    files = sorted(files, key=lambda p: p.name)
    if test_fraction == 0:
        return split_files(files, split, test_fraction, "episode")
    root = list(range(len(files)))  # union-find; a group's root is its first file

    def find(i: int) -> int:
        while root[i] != i:
            root[i] = root[root[i]]
            i = root[i]
        return i

    first: dict[tuple[Any, ...], int] = {}
    for i, path in enumerate(files):
        content, seed = _identity(path)
        for key in [("content", content)] + ([("seed", seed)] if seed is not None else []):
            if key not in first:
                first[key] = i
                continue
            a, b = find(i), find(first[key])
            root[max(a, b)] = min(a, b)
    roots = sorted({find(i) for i in range(len(files))})
    what = "episode" if len(roots) == len(files) else "distinct episode"
    chosen = set(split_files([files[r] for r in roots], split, test_fraction, what))
    return [path for i, path in enumerate(files) if files[find(i)] in chosen]


class EpisodeSource(SequenceSource):
    """A replay of episodes from which windows inside single episodes are sampled.

    Args:
        image_size: S; frames are resized to S x S on insertion.
        channels: C (1 or 3).
        action_dim: A; None = taken from the first episode added.
        split: "train" or "test" (changes the stream of :meth:`eval_batch`).
        capacity: keep at most this many steps, dropping the oldest episodes (None = all).
    """

    def __init__(
        self, image_size: int = 64, channels: int = 3, action_dim: int | None = None,
        split: str = "train", capacity: int | None = None,
    ) -> None:
        self.image_size = image_size
        self.channels = channels
        self.action_dim = 0 if action_dim is None else int(action_dim)
        self._action_dim_known = action_dim is not None
        self._action_dim_from = f"the source's (action_dim={action_dim})"
        self.split = split
        self.capacity = capacity
        self.episodes: list[dict[str, np.ndarray]] = []
        self.lengths: list[int] = []
        self._first_frames: tuple[tuple[int, ...], str] | None = None  # the first episode's (H, W, C), file

    @classmethod
    def from_directory(
        cls, path: str | Path, image_size: int = 64, channels: int = 3,
        split: str | None = None, test_fraction: float = 0.1,
        action_dim: int | None = None, capacity: int | None = None,
    ) -> EpisodeSource:
        """Load every episode ``.npz`` under ``path`` (all, or one split of them)."""
        root = Path(path)
        if not root.is_dir():
            raise DatasetNotFoundError(not_found("episodes", str(path), _HOW))
        sub = split_dir(root, split) if split is not None else None
        files = sorted((p for p in (sub or root).rglob("*.npz") if not p.name.startswith(".")),
                       key=lambda p: p.name)  # hidden names are temporary files of writers
        if not files:
            raise DatasetNotFoundError(not_found("episodes: no .npz files", str(sub or root), _HOW))
        if split is not None and sub is None:
            files = split_episode_files(files, split, test_fraction)
        source = cls(image_size, channels, action_dim, split or "train", capacity)
        for file, ep in zip(files, read_many(load_episode, files)):
            source.add_episode(ep, validate=False, origin=str(file))
        return source

    @property
    def num_episodes(self) -> int:
        return len(self.episodes)

    @property
    def num_steps(self) -> int:
        return int(sum(self.lengths))

    def add_episode(self, ep: Mapping[str, Any], validate: bool = True, origin: str = "episode") -> None:
        """Append one episode (see the module docstring for its layout); `origin` (its file)
        names it in errors."""
        data = validate_episode(ep, origin) if validate else dict(ep)
        action_dim = data["action"].shape[1]
        if not self._action_dim_known:
            self.action_dim, self._action_dim_known = action_dim, True
            self._action_dim_from = f"those of {origin}"
        elif action_dim != self.action_dim:
            raise ValueError(f"{origin}: its actions have size {action_dim}, but {self._action_dim_from} "
                             f"have size {self.action_dim}: all episodes of a data set need one action size")
        _odd_episode(self, data, origin)
        self.episodes.append({
            "image": prepare_video(data["image"], self.image_size, self.channels, origin),
            "action": data["action"],
            "reward": data["reward"],
            "is_first": data["is_first"],
            "is_terminal": data["is_terminal"],
        })
        self.lengths.append(len(data["image"]))
        if self.capacity is not None:
            while len(self.episodes) > 1 and sum(self.lengths) > self.capacity:
                self.episodes.pop(0)
                self.lengths.pop(0)

    def sample(self, rng: np.random.Generator, batch_size: int, seq_len: int) -> Batch:
        """Windows (B, T) that never cross an episode's end."""
        check_batch_args(batch_size, seq_len)
        index, start = sample_windows(rng, self.lengths, batch_size, seq_len, what="episode")
        parts: dict[str, list[np.ndarray]] = {k: [] for k in self.episodes[0]}
        for i, s in zip(index.tolist(), start.tolist()):
            for key, value in self.episodes[i].items():
                parts[key].append(value[s:s + seq_len])
        stacked = {k: np.stack(v) for k, v in parts.items()}
        return Batch(
            frames=videos_to_frames(stacked["image"]),  # (B, T, C, H, W)
            actions=torch.from_numpy(stacked["action"]),  # (B, T, A)
            rewards=torch.from_numpy(stacked["reward"]),  # (B, T)
            is_first=torch.from_numpy(stacked["is_first"]),  # (B, T) bool
            continues=torch.from_numpy(1.0 - stacked["is_terminal"].astype(np.float32)),
        )

    def __repr__(self) -> str:
        return (f"EpisodeSource(split={self.split!r}, episodes={self.num_episodes}, "
                f"steps={self.num_steps}, size={self.image_size}, channels={self.channels}, "
                f"action_dim={self.action_dim})")


ACTION_WARNED = 1e3  # actions larger in magnitude get a warning: the model takes them as they are


def _odd_episode(source: EpisodeSource, data: Mapping[str, np.ndarray], origin: str) -> None:
    """Warn, naming `origin`, about what an episode is taken with although it looks wrong: frames
    of another size or channel count than the first episode's (they are resized or converted),
    a `log_seed` that is no integer seed (it is ignored), actions of huge magnitude."""
    frames = tuple(data["image"].shape[1:])
    if source._first_frames is None:
        source._first_frames = (frames, origin)
    elif frames != source._first_frames[0]:
        (h, w, c), (h0, w0, c0) = frames, source._first_frames[0]
        warnings.warn(f"{origin}: frames of {h}x{w} with {c} channel(s), unlike {source._first_frames[1]} "
                      f"({h0}x{w0} with {c0}): taken resized and converted to {source.image_size}x"
                      f"{source.image_size} with {source.channels}", stacklevel=4)
    if SEED_KEY in data:
        seeds = np.asarray(data[SEED_KEY])
        if seeds.dtype.kind not in "iu":
            warnings.warn(f"{origin}: {SEED_KEY!r} holds {seeds.dtype} values, not integer seeds; it is "
                          "ignored (episodes are told apart by their content only)", stacklevel=4)
    largest = float(np.abs(data["action"]).max()) if data["action"].size else 0.0
    if largest > ACTION_WARNED:
        warnings.warn(f"{origin}: actions up to {largest:.3g} in magnitude; the model takes them as they are "
                      "(scale them to about [-1, 1])", stacklevel=4)


def build(cfg: DataConfig, options: EpisodeOptions, split: str) -> EpisodeSource:
    if cfg.path is None:
        raise DatasetNotFoundError(not_found("episodes", None, _HOW))
    source = EpisodeSource.from_directory(cfg.path, cfg.image_size, cfg.channels, split,
                                          options.test_fraction)
    if max(source.lengths) < cfg.seq_len:
        raise ValueError(f"episodes ({split}) at {cfg.path!r}: no episode has at least "
                         f"data.seq_len={cfg.seq_len} steps; the longest has {max(source.lengths)}")
    short = sum(length < cfg.seq_len for length in source.lengths)
    if short:
        warnings.warn(f"episodes ({split}) at {cfg.path!r}: {short} of {len(source.lengths)} episodes are "
                      f"shorter than data.seq_len={cfg.seq_len} steps and are never sampled", stacklevel=3)
    return source


__all__ = ["EPISODE_KEYS", "SEED_KEY", "EpisodeOptions", "EpisodeSource", "build", "load_episode",
           "save_episode", "split_episode_files", "validate_episode"]
