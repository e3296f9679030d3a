"""Data-parallel runs on torch.distributed: the process group that torchrun's environment describes, and the few
collectives the trainer needs.

`torchrun --nproc-per-node=G -m cutrec train ...` (or `cutrec train --devices G`) starts G processes with RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT set; `start` joins them into one group: NCCL when they train on
CUDA (each on its own GPU, cuda:LOCAL_RANK), gloo on the CPU. A second, gloo group carries the host's small
agreements (stop signals, checkpoint times) without touching the GPUs. Without WORLD_SIZE > 1 every function here
is the single-process identity, so the trainer has one code path.

Every collective has the group's timeout (train.dist_timeout_minutes): a rank that died or hangs makes the others
fail with an error after at most that long, never wait forever.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from cutrec.errors import CutrecError


@dataclass(frozen=True)
class Ranks:
    """This process's place in the run: rank r of `world` processes, on GPU `local` of its machine."""

    rank: int = 0
    world: int = 1
    local: int = 0
    host_group: Any = None  # the gloo group of host agreements; None in a single process
    grouped: bool = False  # in a process group (started by torchrun), even one of a single process

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes the run folder, the log and the checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


SINGLE = Ranks()


TRANSPORT_WORDS = ("gloo", "NCCL", "Connection", "timed out")  # how a lost peer reads in a RuntimeError


@contextlib.contextmanager
def collective(ranks: Ranks) -> Iterator[None]:
    """Turns a failed collective (a rank died, or stayed silent past the timeout) into one line naming this rank;
    nothing in a single process."""
    if not ranks.distributed:
        yield
        return
    try:
        yield
    except RuntimeError as err:  # gloo reports a lost peer as a plain RuntimeError, NCCL as a DistError
        if not isinstance(err, dist.DistError) and not any(word in str(err) for word in TRANSPORT_WORDS):
            raise
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise CutrecError(
            f"rank {ranks.rank} of {ranks.world} lost the other ranks ({first}); every rank stops, and the first one "
            "to fail has printed why; resume from the run folder's last.pt"
        ) from None


def world_size() -> int:
    """WORLD_SIZE from torchrun's environment, 1 without it."""
    value = os.environ.get("WORLD_SIZE", "1")
    try:
        return int(value)
    except ValueError:
        raise CutrecError(f"WORLD_SIZE={value!r} is not a number; launch with torchrun or leave it unset") from None


def start(device: torch.device, timeout_minutes: float) -> Ranks:
    """Join the process group of this run (once per process): every process that torchrun started, even a single
    one (catalog parallel on one rank measures that code path's overhead); SINGLE outside torchrun."""
    world = world_size()
    if world == 1 and "TORCHELASTIC_RUN_ID" not in os.environ:
        return SINGLE
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=timedelta(minutes=timeout_minutes))
    ranks = Ranks(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    host_group = dist.new_group(backend="gloo", timeout=timedelta(minutes=timeout_minutes))
    return Ranks(ranks.rank, ranks.world, ranks.local, host_group, grouped=True)


def check_batch(batch: int | str, world: int) -> None:
    """A global batch size must split evenly over the ranks ("auto" is sized per rank)."""
    if batch != "auto" and int(batch) % world:
        raise CutrecError(
            f"train.batch_size={batch} does not split evenly over {world} ranks; use a multiple of {world} (the "
            f"batch size is the global one: each rank trains batch_size / {world} rows)"
        )


def rank_device(device: torch.device, ranks: Ranks) -> torch.device:
    """The device of this rank: on CUDA, GPU LOCAL_RANK of its machine; the CPU is shared."""
    if device.type != "cuda" or not ranks.distributed:
        return device
    if device.index not in (None, 0):
        raise CutrecError(f"train.device={device} names one GPU, but a data-parallel run puts rank r on cuda:r; "
                          "use train.device=cuda (or auto)")
    if ranks.local >= torch.cuda.device_count():
        raise CutrecError(f"rank {ranks.rank} wants cuda:{ranks.local} but {torch.cuda.device_count()} GPU(s) are "
                          "visible; start at most that many processes per node")
    torch.cuda.set_device(ranks.local)
    return torch.device("cuda", ranks.local)


def shards(count: int, world: int) -> list[tuple[int, int]]:
    """[start, stop) of every rank's contiguous share of `count` rows, in rank order; sizes differ by at most one."""
    bounds = np.linspace(0, count, world + 1).round().astype(np.int64)  # [world + 1]
    return [(int(bounds[rank]), int(bounds[rank + 1])) for rank in range(world)]


def shard(count: int, ranks: Ranks) -> tuple[int, int]:
    """[start, stop) of this rank's share of `count` rows (`shards`)."""
    return shards(count, ranks.world)[ranks.rank]


def broadcast(value: Any, ranks: Ranks) -> Any:
    """Rank 0's `value` (plain Python data) on every rank."""
    if not ranks.distributed:
        return value
    box = [value]
    with collective(ranks):
        dist.broadcast_object_list(box, src=0, group=ranks.host_group)
    return box[0]


def agree(flags: list[bool], ranks: Ranks) -> list[bool]:
    """Each flag true on every rank when it is true on any rank (the host's agreements: a stop signal, a due
    checkpoint), so that every rank takes the same branch."""
    if not ranks.distributed:
        return flags
    values = torch.tensor(flags, dtype=torch.int64)
    with collective(ranks):
        dist.all_reduce(values, op=dist.ReduceOp.MAX, group=ranks.host_group)
    return [bool(value) for value in values.tolist()]


def sum_all(tensor: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """The sum of `tensor` over ranks (a new tensor; the input is unchanged)."""
    if not ranks.distributed:
        return tensor.clone()
    total = tensor.clone()
    with collective(ranks):
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def gather_all(tensor: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """[W, ...] every rank's `tensor` (one shape on every rank), in rank order, over the device's group (NCCL on
    GPUs); a collective even in a group of one (catalog parallel on one rank)."""
    parts = [torch.empty_like(tensor) for _ in range(ranks.world)]
    with collective(ranks):
        dist.all_gather(parts, tensor.contiguous())
    return torch.stack(parts)


def gather_rows(rows: torch.Tensor, count: int, ranks: Ranks, *, main_only: bool = False) -> torch.Tensor | None:
    """Every rank's `rows` [n_r, ...] on the CPU (its `shard` of `count` rows) concatenated in rank order:
    [count, ...], on every rank, or with `main_only` on rank 0 alone (the others get None and hold no copy)."""
    if not ranks.distributed:
        return rows
    sizes = [stop - start for start, stop in shards(count, ranks.world)]
    padded = rows.new_zeros((max(sizes), *rows.shape[1:]))  # [widest, ...] the collectives need equal shapes
    padded[: len(rows)] = rows
    receiving = not main_only or ranks.main
    parts = [torch.empty_like(padded) for _ in range(ranks.world)] if receiving else None
    with collective(ranks):
        if main_only:
            dist.gather(padded, parts, dst=0, group=ranks.host_group)
        else:
            dist.all_gather(parts, padded, group=ranks.host_group)
    return torch.cat([part[:size] for part, size in zip(parts, sizes, strict=True)]) if receiving else None


def gather_objects(value: Any, ranks: Ranks) -> list[Any]:
    """Every rank's `value` (plain Python data or CPU tensors), in rank order."""
    if not ranks.distributed:
        return [value]
    values: list[Any] = [None] * ranks.world
    with collective(ranks):
        dist.all_gather_object(values, value, group=ranks.host_group)
    return values


def barrier(ranks: Ranks) -> None:
    if ranks.distributed:
        with collective(ranks):
            dist.barrier(group=ranks.host_group)


def main_first(load: Callable[[], Any], ranks: Ranks) -> Any:
    """`load()` on rank 0 first, then on the others: rank 0 reads and caches the data (a long preprocessing of a large
    log waits up to a day: a rank that dies ends the others through torchrun) and the others read its cache, so the
    host never preprocesses the same log once per rank."""
    if not ranks.distributed:
        return load()
    value = load() if ranks.main else None
    with collective(ranks):
        dist.monitored_barrier(group=ranks.host_group, timeout=timedelta(days=1))
    return value if ranks.main else load()


def finish() -> None:
    """Leave the process group after a run that ended well on every rank (a process that exits inside one aborts)."""
    if dist.is_initialized():
        dist.destroy_process_group()
