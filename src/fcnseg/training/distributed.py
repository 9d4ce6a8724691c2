"""DDP through torchrun: process group, device per rank, sharding and small collectives.

``torchrun --nproc_per_node N -m fcnseg.cli train ...`` starts N processes with RANK,
LOCAL_RANK and WORLD_SIZE set; ``setup`` joins them into a process group (NCCL on CUDA,
gloo on CPU). Without those variables everything runs as a single process and every helper
here is a no-op, so the training code has one path.

Every collective waits at most ``timeout_seconds`` (TrainConfig ``ddp_timeout_seconds``) for
the other ranks; a rank that stops answering (frozen, stopped, hung) then ends the waiting
ones with ``CollectiveTimeoutError``, one line saying which rank waited, for how long and on
whom (``collective_timeouts``), instead of torch's 30-minute default and gloo's message.
NCCL's watchdog aborts the process on a timeout instead: that message comes from torch.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator, Sized
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from ..devices import resolve_device

__all__ = [
    "Context",
    "CollectiveTimeoutError",
    "setup",
    "teardown",
    "collective_timeouts",
    "ShardSampler",
    "all_reduce_max",
    "all_mean",
    "gather_values",
    "barrier",
]

DEFAULT_TIMEOUT_SECONDS = 300.0


class CollectiveTimeoutError(RuntimeError):
    """A rank waited ``timeout_seconds`` for the others: the message names who went silent."""


@dataclass(frozen=True)
class Context:
    """Where this process runs: its rank among ``world_size`` and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes files and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device: str = "auto", timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS) -> Context:
    """Join the torchrun process group when launched by torchrun; else a single process.

    ``timeout_seconds`` bounds the wait for the other ranks, here and in every collective."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    resolved = resolve_device(device, local_rank)
    if world_size > 1 and resolved.type == "cuda" and resolved.index != local_rank:
        raise ValueError(
            f"device {device!r} names one GPU for all {world_size} torchrun processes: use "
            "device = cuda (each process takes the GPU of its LOCAL_RANK), or choose the GPUs "
            "with CUDA_VISIBLE_DEVICES"
        )
    context = Context(rank, world_size, local_rank, resolved)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if resolved.type == "cuda" else "gloo"
        if resolved.type == "cuda":
            torch.cuda.set_device(resolved)
        timeout = datetime.timedelta(seconds=timeout_seconds)
        with collective_timeouts(context, timeout_seconds, joining=True):
            dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=timeout)
    return context


@contextmanager
def collective_timeouts(context: Context, timeout_seconds: float, *, joining: bool = False):
    """Turn torch's timeout errors (gloo: "Timed out waiting 5000ms for recv operation",
    then "Application timeout caused pair closure"; the store: "Timed out after 5 seconds
    waiting for clients") into one ``CollectiveTimeoutError`` line."""
    try:
        yield
    except RuntimeError as error:
        if not context.distributed or not _timed_out(error):
            raise
        raise CollectiveTimeoutError(_timeout_message(context, timeout_seconds, joining)) from None


def _timed_out(error: BaseException | None) -> bool:
    """Whether ``error``, or one it was raised while handling, is a timeout."""
    while error is not None:
        text = str(error).lower()
        if "timed out" in text or "timeout" in text:
            return True
        error = error.__cause__ or error.__context__
    return False


def _timeout_message(context: Context, seconds: float, joining: bool) -> str:
    """Gloo does not say which peer it waited on: with two ranks it can only be the other;
    with more, it is one or more of the others."""
    others = [rank for rank in range(context.world_size) if rank != context.rank]
    who = f"rank {others[0]}" if len(others) == 1 else f"one or more of ranks {others}"
    waiting = "to join the process group" if joining else "in a collective operation"
    return (
        f"rank {context.rank} of {context.world_size} timed out after {seconds:g} s waiting "
        f"for {who} {waiting}: {who} stopped answering (frozen, stopped, crashed or far "
        f"slower); check that process, or raise ddp_timeout_seconds (now {seconds:g}) if "
        "it is only slow"
    )


def teardown(context: Context) -> None:
    if context.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(context: Context) -> None:
    if context.distributed:
        dist.barrier()


def all_reduce_max(value: float, context: Context) -> float:
    """The largest ``value`` over ranks (flags that must stop every rank at once)."""
    if not context.distributed:
        return value
    tensor = torch.tensor([float(value)], device=_collective_device(context))
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return float(tensor.item())


def all_mean(value: float, context: Context) -> float:
    """The mean of ``value`` over ranks."""
    if not context.distributed:
        return value
    tensor = torch.tensor([float(value)], device=_collective_device(context))
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return float(tensor.item()) / context.world_size


def gather_values(value: torch.Tensor, context: Context) -> list[float]:
    """Every rank's scalar ``value`` (a tensor on this rank's device), by rank: one
    collective and one read by the host, where ``.item()`` and a collective per value
    would cost one of each per value."""
    if not context.distributed:
        return [float(value.item())]
    slots = torch.zeros(context.world_size, dtype=torch.float64, device=value.device)
    slots[context.rank] = value  # every other rank adds 0 here
    slots = slots.to(_collective_device(context))
    dist.all_reduce(slots, op=dist.ReduceOp.SUM)
    return slots.tolist()


def _collective_device(context: Context) -> torch.device:
    return context.device if dist.get_backend() == "nccl" else torch.device("cpu")


class ShardSampler(Sampler[int]):
    """Indices rank, rank + W, rank + 2W, ...: every item exactly once over all ranks.

    For evaluation: DistributedSampler pads the last round with repeated items, which would
    count those pixels twice in the confusion matrix.
    """

    def __init__(self, data: Sized | int, rank: int = 0, world_size: int = 1) -> None:
        self.length = data if isinstance(data, int) else len(data)
        self.rank, self.world_size = rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.length, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.length, self.world_size))
