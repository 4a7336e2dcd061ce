"""Data-parallel training under torchrun without DDP.

DDP does not synchronise gradients that come from a ``create_graph=True`` graph correctly
(pytorch#63812, #47562), and the WGAN-GP penalty is exactly that. So, as StyleGAN2/3 do:
broadcast parameters and buffers once from rank 0, then after each backward all-reduce
*one flat buffer* holding every gradient (penalty gradients included) and divide by the
world size. Each rank draws its own batch of B samples (disjoint shards of the data), so a
step on N processes x batch B equals one process x batch N*B for critics without batch
norm (batch norm statistics are per process by construction).

Backend: nccl for CUDA, gloo on CPU. With no torchrun environment (WORLD_SIZE unset or 1)
everything here is a no-op on one process, so the trainer calls these unconditionally.
"""
from __future__ import annotations

import datetime
import os
from typing import Iterable

import torch
import torch.distributed as dist
from torch import nn


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def init_distributed(backend: str | None = None, device: str | torch.device | None = None,
                     timeout_s: float = 600.0) -> tuple[int, int, int]:
    """Join the process group that torchrun describes in the environment.

    Returns (rank, world_size, local_rank); (0, 1, 0) without torchrun. ``backend`` None =
    nccl when the run uses CUDA (``device``, default: CUDA if available) else gloo. On CUDA
    the process's current device is set to ``cuda:local_rank``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    for var in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        if var not in os.environ:
            raise ValueError(f"WORLD_SIZE={world} but {var} is not set: launch with torchrun")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    dev_type = torch.device(device).type if device is not None else (
        "cuda" if torch.cuda.is_available() else "cpu")
    if backend is None:
        backend = "nccl" if dev_type == "cuda" else "gloo"
    if backend not in ("nccl", "gloo"):
        raise ValueError(f"backend must be 'nccl' or 'gloo', got {backend!r}")
    if dev_type == "cuda":
        torch.cuda.set_device(local_rank)
    if not is_distributed():
        dist.init_process_group(backend=backend, init_method="env://", rank=rank,
                                world_size=world,
                                timeout=datetime.timedelta(seconds=timeout_s))
    return rank, world, local_rank


def cleanup() -> None:
    if is_distributed():
        dist.destroy_process_group()


def _flat_groups(tensors: list[torch.Tensor]) -> dict[tuple, list[torch.Tensor]]:
    groups: dict[tuple, list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.device, t.dtype), []).append(t)
    return groups


@torch.no_grad()
def broadcast_module(module: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers to every rank (one flat buffer per dtype),
    so every process starts from the same weights whatever its seed."""
    if not is_distributed():
        return
    tensors = [p.data for p in module.parameters()] + [b for b in module.buffers()]
    for group in _flat_groups(tensors).values():
        flat = torch.cat([t.reshape(-1) for t in group])
        dist.broadcast(flat, src=src)
        offset = 0
        for t in group:
            n = t.numel()
            t.copy_(flat[offset:offset + n].view_as(t))
            offset += n


@torch.no_grad()
def allreduce_grads_(params: Iterable[torch.Tensor], flag: torch.Tensor | None = None,
                     average: bool = True) -> torch.Tensor | None:
    """Average the gradients of ``params`` over all processes in one all-reduce of one flat
    buffer (per device/dtype), and sum ``flag`` (a 0-d fp32 tensor, e.g. GANStep's
    non-finite flag) in the same buffer, so every rank gets every rank's flag for free.

    A parameter without a gradient on this rank contributes zeros (and gets a zero
    gradient), so every rank sends the same layout and none waits forever. Call after
    backward and before unscaling: GradScaler's unscale_ then sees the averaged scaled
    gradients, which is what a single process would have. Returns the summed flag (``flag``
    itself on one process).
    """
    params = [p for p in params if p.requires_grad]
    if not is_distributed():
        return flag
    world = dist.get_world_size()
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    groups = _flat_groups([p.grad for p in params])
    if flag is not None:
        groups.setdefault((flag.device, flag.dtype), [])
    out = flag
    for key, group in groups.items():
        parts = [g.reshape(-1) for g in group]
        with_flag = flag is not None and key == (flag.device, flag.dtype)
        flat = torch.cat(parts + ([flag.reshape(1)] if with_flag else []))
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for g in group:
            n = g.numel()
            g.copy_(flat[offset:offset + n].view_as(g))
            if average:
                g.div_(world)
            offset += n
        if with_flag:
            out = flat[offset].clone()
    return out


def agreed(flag: bool, world: int, device) -> bool:
    """True on every rank when it is True on any: a stop must happen at the same step
    everywhere, or the others wait forever in the next all-reduce."""
    if world == 1:
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def noise_seed(seed: int, rank: int, step: int = 0) -> int:
    """Each process's own seed for its noise (z, alpha), derived from the run's seed, the
    rank and the step it (re)starts from; data order and model init stay shared."""
    return int(seed) + 1_000_003 * int(rank) + 7_919 * int(step)
