"""Rank and world helpers for running under ``torch.distributed`` (e.g. launched by ``torchrun``).

Everything here reads the state ``torch.distributed`` keeps (or the ``RANK`` / ``WORLD_SIZE``
variables ``torchrun`` sets); this module keeps none of its own. One process without those
variables is a world of one: every helper is then a no-op.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from typing import TypeVar

T = TypeVar("T")

#: How long a collective waits for the other ranks. A rank that finished its shards waits at a
#: barrier while the others finish theirs, and the others wait while rank 0 consolidates, so
#: torch's 30-minute default is too short for a large corpus. A rank that dies does not leave
#: the others waiting this long under torchrun: its agent stops the whole job.
DEFAULT_TIMEOUT = timedelta(hours=6)


def _env_world() -> tuple[int, int]:
    """``(RANK, WORLD_SIZE)`` from the environment torchrun sets; ``(0, 1)`` without it."""
    try:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0, 1
    return (rank, size) if size > 1 else (0, 1)


def is_distributed() -> bool:
    """True when a process group is initialised or torchrun started more than one process."""
    return world()[1] > 1


def _group_initialised() -> bool:
    """True when torch.distributed has a default process group (without importing torch for it)."""
    dist = sys.modules.get("torch.distributed")  # not imported yet: no group can exist
    return bool(dist is not None and dist.is_available() and dist.is_initialized())


def world() -> tuple[int, int]:
    """``(rank, world_size)``: the initialised process group's, else torchrun's env, else ``(0, 1)``."""
    if _group_initialised():
        import torch.distributed as dist

        return dist.get_rank(), dist.get_world_size()
    return _env_world()


def is_main() -> bool:
    """True on rank 0 (and in a single process)."""
    return world()[0] == 0


def init_from_env(timeout: timedelta = DEFAULT_TIMEOUT) -> bool:
    """Initialise the default process group (``gloo``, ``env://``) if torchrun asks for one.

    Idempotent: an already initialised group (any backend) is left as it is. Returns True when
    a process group is initialised afterwards, False for a single process.
    """
    if _group_initialised():
        return True
    if _env_world()[1] <= 1:
        return False
    import torch.distributed as dist

    if not dist.is_available():
        raise RuntimeError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} but this torch build has no torch.distributed")
    dist.init_process_group("gloo", init_method="env://", timeout=timeout)
    return True


def barrier() -> None:
    """Wait until every rank gets here (initialising from torchrun's env if needed); no-op alone."""
    if world()[1] <= 1 or not init_from_env():
        return
    import torch.distributed as dist

    dist.barrier()


def broadcast_from_main(obj: T) -> T:
    """Rank 0's ``obj`` on every rank (a picklable object); ``obj`` itself in a single process."""
    if world()[1] <= 1 or not init_from_env():
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather(obj: T) -> list[T]:
    """Every rank's ``obj``, in rank order (a collective: it is also a barrier); ``[obj]`` alone."""
    if world()[1] <= 1 or not init_from_env():
        return [obj]
    import torch.distributed as dist

    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def rank_device(device: str) -> str:
    """``device`` for this process: under torchrun, a bare ``cuda`` (or ``auto``) names this rank's GPU.

    torchrun sets ``LOCAL_RANK``; ranks on one node then use ``cuda:0``, ``cuda:1``, ... instead
    of all sharing ``cuda:0``. ``auto`` stays ``auto`` when torch sees no GPU (the extractor
    resolves it to the CPU). Outside torchrun the value is returned unchanged.
    """
    local = os.environ.get("LOCAL_RANK")
    if local is None or not is_distributed() or device not in ("cuda", "auto"):
        return device
    import torch

    if not torch.cuda.is_available():
        return device
    return f"cuda:{int(local) % torch.cuda.device_count()}"


def shards_for_rank(n_shards: int, rank: int, world_size: int) -> list[int]:
    """The positions ``0..n_shards-1`` a rank owns: ``k`` goes to rank ``k % world_size`` (disjoint, covering)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of size {world_size}")
    return list(range(rank, n_shards, world_size))


__all__ = ["DEFAULT_TIMEOUT", "all_gather", "barrier", "broadcast_from_main", "init_from_env", "is_distributed",
           "is_main", "rank_device", "shards_for_rank", "world"]
