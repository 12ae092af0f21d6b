"""Shared fixtures: tiny model configs that run in milliseconds on a CPU."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
torch.set_num_threads(1)  # tiny models: more threads only spin on a busy machine

from worldmodel import DLH, DLHConfig  # noqa: E402
from worldmodel.config import MOVED_KEYS  # noqa: E402


def tiny_config(**overrides) -> DLHConfig:
    """A tiny DLHConfig; the keys of a section may be given by their own name, as a YAML file of
    the flat layout gives them (`tiny_config(boundary="copy", obs_std=0.1)` sets
    `inference.boundary` and `loss.obs_std`), and go through the sections' own constructors."""
    base = dict(
        levels=3, image_size=16, channels=1, x_dim=32, c_dim=32, d_dim=32, s_dim=8,
        enc_hidden=(32,), dec_hidden=(32,), state_hidden=(16,), factor_hidden=(16,),
        head_hidden=(16,), conv_depth=4,
    )
    base.update(overrides)
    default = DLHConfig()
    sections: dict = {"inference": {}, "loss": {}}
    for old, new in MOVED_KEYS["DLHConfig"].items():
        if old in base:
            section, key = new.split(".")
            sections[section][key] = base.pop(old)
    for name, changes in sections.items():
        base[name] = base.get(name, getattr(default, name)).replace(**changes)
    return DLHConfig(**base)


def tiny_model(seed: int = 0, **overrides) -> DLH:
    torch.manual_seed(seed)
    return DLH(tiny_config(**overrides))


def random_frames(batch: int = 2, steps: int = 6, channels: int = 1, size: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, steps, channels, size, size, generator=g)


class SpyModel(DLH):
    """A DLH that records (action, is_first) of every `observe_step` call; with
    `require_inference_mode`, it also checks that the caller filters under inference mode."""

    def __init__(self, config, require_inference_mode: bool = False):
        super().__init__(config)
        self.require_inference_mode = require_inference_mode
        self.seen: list[tuple[torch.Tensor, bool]] = []

    def observe_step(self, state, frame, action=None, is_first=None):
        self.seen.append((action.clone(), bool(is_first.item())))
        if self.require_inference_mode:
            assert torch.is_inference_mode_enabled()
        return super().observe_step(state, frame, action, is_first)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny networks run fastest on one thread (two spin against each other on busy cores);
    restored after each test, which may change it (the trainer's `threads` setting)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def model() -> DLH:
    return tiny_model()
