"""Starting N worker processes with ``torch.distributed`` on one machine (gloo on CPU, nccl on GPU).

``spawn(fn, nproc, *args)`` runs ``fn(rank, world, *args)`` in ``nproc`` processes joined in the
default process group on a free loopback port; ``fn`` must be a module-level function (pickled
by ``torch.multiprocessing.spawn``). Under ``torchrun`` the group is initialised from the
environment instead: see :func:`init_from_env`.
"""

from __future__ import annotations

import os
import socket
from typing import Callable

import torch
import torch.distributed as dist

__all__ = ["free_port", "spawn", "init_from_env"]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, fn: Callable, world: int, port: int, backend: str, threads: int, args: tuple) -> None:
    torch.set_num_threads(threads)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        fn(rank, world, *args)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def spawn(fn: Callable, nproc: int, *args, backend: str | None = None, threads: int = 1) -> None:
    """Run ``fn(rank, world, *args)`` in ``nproc`` processes joined by ``torch.distributed``.

    Args:
        fn: a module-level function.
        nproc: number of processes (>= 1).
        backend: ``"gloo"`` (default without CUDA) or ``"nccl"`` (default with CUDA).
        threads: torch threads per process.
    """
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise ValueError(f"nproc must be an int >= 1, got {nproc!r}")
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    import torch.multiprocessing as mp

    mp.spawn(_entry, args=(fn, nproc, free_port(), backend, threads, args), nprocs=nproc, join=True)


def init_from_env(backend: str | None = None) -> tuple[int, int]:
    """Initialise the default group from torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR,
    MASTER_PORT) if it is set and no group exists; returns (rank, world)."""
    if "WORLD_SIZE" in os.environ and not dist.is_initialized():
        dist.init_process_group(backend or ("nccl" if torch.cuda.is_available() else "gloo"))
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1
