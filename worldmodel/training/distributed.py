"""Device choice and DDP setup: one process per device under `torchrun`, gloo on CPU."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def choose_device(requested: str, local_rank: int = 0) -> torch.device:
    if requested == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(
            f"device={requested!r} but CUDA is not available on this machine; use device=auto or cpu"
        )
    if requested == "cuda":
        return torch.device(f"cuda:{local_rank}")
    return torch.device(requested)


def setup(requested_device: str) -> Runtime:
    """Initialise the process group when launched by torchrun (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = choose_device(requested_device, local_rank)
    if world <= 1:
        return Runtime(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
    return Runtime(device, dist.get_rank(), dist.get_world_size())


def any_true(flag: bool, runtime: Runtime) -> bool:
    """True on every rank if `flag` is True on any rank."""
    if not runtime.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=runtime.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def barrier(runtime: Runtime) -> None:
    if runtime.distributed:
        dist.barrier()


def teardown(runtime: Runtime) -> None:
    """Close the process group once every rank got here.

    Rank 0 writes the final media, model and summary while the others have nothing left to do;
    a rank that destroys its gloo group while rank 0 is still connected can abort ("terminate
    called without an active exception"), so all ranks wait for each other first."""
    if runtime.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


__all__ = ["Runtime", "setup", "choose_device", "any_true", "barrier", "teardown"]
