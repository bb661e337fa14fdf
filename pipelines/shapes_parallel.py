"""Data parallelism for the shapes model's training stages on a shared CPU.

``workers`` > 1 runs single-thread processes that all-reduce their gradients over gloo: on a shared
CPU, N one-thread processes keep going where one N-thread process stalls on its thread barriers.
A stage is named ``"module:function"`` so the spawned processes can import it.
"""

from __future__ import annotations

import importlib
import math
import os
import socket
import threading
import time

import numpy as np
import torch
import torch.distributed as dist

from conceptedit.pipelines import shapes as S


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """World images uint8 (N, H, W, 3) → float (N, 3, r, r) in [-1, 1] at the model's resolution."""
    images = S.model_images(images)
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def training_device(device: str | torch.device, workers: int) -> torch.device:
    """The device a training stage runs on: one this machine has (else a one-line error), and with
    ``workers`` > 1 only the CPU (the workers are gloo processes that average CPU gradients)."""
    from conceptedit.devices import check_device
    from conceptedit.errors import ConfigError

    dev = check_device(device)
    if dev.type != "cpu" and workers > 1:
        raise ConfigError(f"--workers {workers} runs CPU processes; on {dev} train with --workers 1")
    return dev


def cosine_lr(base: float, progress: float, warmup: float = 0.03, floor: float = 0.05) -> float:
    if progress < warmup:
        return base * progress / warmup
    p = (progress - warmup) / (1 - warmup)
    return base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(p, 1.0))))


def world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def average_grads(params: list[torch.nn.Parameter]) -> None:
    rank, size = world()
    if size == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= size
    offset = 0
    for p, g in zip(params, grads, strict=True):
        n = g.numel()
        p.grad = flat[offset : offset + n].view_as(p)
        offset += n


def synced_progress(value: float) -> float:
    """All ranks take the same learning-rate / stop decision (the slowest clock wins)."""
    rank, size = world()
    if size == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stage(name: str):
    module, function = name.split(":")
    return getattr(importlib.import_module(module), function)


def exit_with_parent(parent: int, poll_s: float = 2.0) -> threading.Thread:
    """Exit this process once ``parent`` is gone (it is re-parented): a killed training command must not
    leave its workers running for hours on a shared CPU, holding the cores its resumed run needs."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)

    thread = threading.Thread(target=watch, name="exit-with-parent", daemon=True)
    thread.start()
    return thread


def _spawn_entry(rank: int, size: int, port: int, fn_name: str, kwargs: dict, parent: int) -> None:
    exit_with_parent(parent)
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(kwargs.pop("threads", None) or 1)
    dist.init_process_group("gloo", rank=rank, world_size=size)
    try:
        _stage(fn_name)(**kwargs)
    finally:
        dist.destroy_process_group()


def run_stage(fn_name: str, workers: int, **kwargs) -> None:
    """Run the stage ``"module:function"`` in ``workers`` processes (in this one when ``workers`` <= 1)."""
    if workers <= 1:
        if kwargs.get("threads"):
            torch.set_num_threads(kwargs["threads"])
        kwargs.pop("threads", None)
        _stage(fn_name)(**kwargs)
        return
    import torch.multiprocessing as mp

    args = (workers, _free_port(), fn_name, kwargs, os.getpid())
    mp.spawn(_spawn_entry, args=args, nprocs=workers, join=True)
