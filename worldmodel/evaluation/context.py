"""What a measurement runs under: the model in evaluation mode, and the held-out data.

Both are used by the evaluation commands and by the trainer's periodic media and probes, so
this module imports nothing from `worldmodel.training` (which imports it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from ..data import DataConfig, SequenceSource, build_source


@contextlib.contextmanager
def evaluating(model: nn.Module, seed: int | None = None) -> Iterator[None]:
    """Evaluation mode, restored on exit (also on error); with `seed`, a forked random stream
    seeded with it as well.

    With a seed the measurement has its own noise, so it neither depends on nor moves the
    caller's random stream. Without one it reads torch's global stream as it stands (the
    trainer's event probe, whose numbers follow the training step before it).
    """
    was_training = model.training
    model.eval()
    try:
        if seed is None:
            yield
        else:
            device = getattr(model, "device", None) or next(model.parameters()).device
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(seed)
                yield
    finally:
        model.train(was_training)


def evaluation_source(data: DataConfig, train: SequenceSource | None = None) -> tuple[SequenceSource, str]:
    """The test split of the data and "test"; where the data has none (building it is a
    ValueError, e.g. an empty test split), the training data and "train": `train` when given
    (the trainer's own source), else the train split built here.

    ValueError (the test split's) when neither can be built.
    """
    try:
        return build_source(data, "test"), "test"
    except ValueError as exc:
        if train is not None:
            return train, "train"
        try:
            return build_source(data, "train"), "train"
        except ValueError:
            raise exc from None


__all__ = ["evaluating", "evaluation_source"]
