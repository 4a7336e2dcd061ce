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


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """Rank 0 writes logs, samples and checkpoints."""
    return get_rank() == 0


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


def barrier() -> None:
    if is_distributed():
        dist.barrier()


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


def _params(module_or_params) -> list[torch.nn.Parameter]:
    if isinstance(module_or_params, nn.Module):
        return [p for p in module_or_params.parameters() if p.requires_grad]
    return [p for p in module_or_params if p.requires_grad]


@torch.no_grad()
def allreduce_grads_(module_or_params: nn.Module | Iterable[torch.Tensor],
                     average: bool = True) -> None:
    """Average the gradients of every trainable parameter over all processes, in one
    all-reduce of one flat buffer (per device/dtype).

    A parameter without a gradient on this rank contributes zeros (and gets a zero
    gradient), so every rank sends the same layout and none waits forever. Call after
    backward (and after unscaling nothing: GradScaler's unscale_ comes later and sees the
    averaged scaled gradients, which is what a single process would have).
    """
    if not is_distributed():
        return
    world = dist.get_world_size()
    params = _params(module_or_params)
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    for group in _flat_groups([p.grad for p in params]).values():
        flat = torch.cat([g.reshape(-1) for g in group])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        if average:
            flat.div_(world)
        offset = 0
        for g in group:
            n = g.numel()
            g.copy_(flat[offset:offset + n].view_as(g))
            offset += n


class GradSync:
    """``state.grad_sync`` for the trainer: identity on one process, else the flat
    all-reduce above."""

    def __call__(self, module: nn.Module) -> None:
        allreduce_grads_(module)


def make_grad_sync():
    """The hook to put in ``TrainState.grad_sync``."""
    return GradSync()


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over processes (for logging); the tensor itself on one process."""
    if not is_distributed():
        return t
    t = t.detach().clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t / dist.get_world_size()


def shard_indices(n: int, batch_size: int, *, rank: int | None = None,
                  world_size: int | None = None, seed: int = 0, epoch: int = 0,
                  shuffle: bool = True, device: torch.device | str = "cpu") -> torch.Tensor:
    """This rank's sample indices for one epoch, shaped (num_batches, batch_size).

    One permutation of range(n), drawn from (seed, epoch) and so identical on every rank,
    cut into global batches of ``batch_size * world_size`` (the incomplete tail is
    dropped), of which rank r takes the r-th slice of ``batch_size``: ranks never share a
    sample in an epoch, and rank r's batch k is rows [r*B, (r+1)*B) of the global batch k
    a single process with batch N*B would draw.
    """
    rank = get_rank() if rank is None else rank
    world_size = get_world_size() if world_size is None else world_size
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    global_batch = batch_size * world_size
    if n < global_batch:
        raise ValueError(f"n={n} samples is fewer than one global batch "
                         f"(batch_size {batch_size} x {world_size} processes)")
    if shuffle:
        g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
        perm = torch.randperm(n, generator=g)
    else:
        perm = torch.arange(n)
    num_batches = n // global_batch
    perm = perm[: num_batches * global_batch].view(num_batches, world_size, batch_size)
    return perm[:, rank].contiguous().to(device)


def per_rank_seed(seed: int, rank: int | None = None) -> int:
    """A distinct seed per process for noise (z, alpha), derived from the run's seed."""
    rank = get_rank() if rank is None else rank
    return int(seed) + 1_000_003 * int(rank)
