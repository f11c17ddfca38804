"""The processes of a ``torchrun`` job, for the commands that share a folder of photos
between them (``everything``, ``eval miou``, ``eval coco``).

Under ``torchrun --nproc_per_node N [--nnodes M --rdzv-endpoint HOST:PORT] -m mobilesam ...``
every process (a *rank*) runs the same command line. :func:`join_ranks` reads torchrun's
environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``) and joins the
process group; without torchrun it returns the one-process :class:`Ranks`, for which every
collective is the identity, so a command has one code path for both.

The group only carries small Python objects (lists of photos, per-image results, counts), so
it always uses the gloo backend, on CPU and GPU machines alike; the model's device is chosen
per rank by :func:`rank_device`. A rank that finishes its share early waits for the others at
the next collective for up to :data:`WAIT_FOR_RANKS`; a rank that dies is noticed by torchrun,
which stops the others.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

T = TypeVar("T")

#: How long a rank waits for the slowest one at a collective (the default of gloo, 30
#: minutes, is shorter than one share of a large folder can take).
WAIT_FOR_RANKS = timedelta(days=7)


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job: ``rank`` of ``world`` processes in all, ``local_rank``
    of ``local_world`` on this machine; ``launched``: started by torchrun (even with one
    process); ``owns_group``: :func:`join_ranks` created the process group (and :meth:`close`
    destroys it)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    launched: bool = False
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that prints totals and writes the job's files."""
        return self.rank == 0

    def share(self, items: Sequence[T]) -> list[T]:
        """This rank's items: item ``i`` goes to rank ``i % world``, so given the same
        sequence every item is taken by exactly one rank and the shares differ in length by
        at most one."""
        return list(items[self.rank :: self.world])

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (pickled; other ranks' ``obj`` is ignored)."""
        if self.world == 1:
            return obj
        import torch.distributed as dist

        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` on rank 0, as a list in rank order; None on other ranks."""
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        out: list[Any] | None = [None] * self.world if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def barrier(self) -> None:
        """Wait until every rank is here."""
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def local_first(self, fn: Callable[[], T]) -> T:
        """``fn()`` on local rank 0 of each machine first, then on the other ranks: e.g. a
        download into a machine's cache, made once per machine rather than by every rank at
        once."""
        if self.world == 1:
            return fn()
        result = fn() if self.local_rank == 0 else None
        self.barrier()
        return fn() if self.local_rank != 0 else result

    def close(self) -> None:
        """Leave the process group if :func:`join_ranks` created it."""
        if self.owns_group:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def join_ranks() -> Ranks:
    """This process's :class:`Ranks`: from torchrun's environment (joining a gloo process
    group when there are several processes), or the single process without it.

    Raises:
        ValueError: torchrun's variables are malformed (not whole numbers, or a rank
            outside the world).
    """
    env = os.environ
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return Ranks()
    try:
        rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
        local_rank = int(env.get("LOCAL_RANK", "0"))
        local_world = int(env.get("LOCAL_WORLD_SIZE", str(world)))
    except ValueError:
        raise ValueError(
            "torchrun's RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE must be whole numbers"
        ) from None
    if not (0 <= rank < world and 0 <= local_rank < local_world <= world):
        raise ValueError(
            f"inconsistent torchrun environment: RANK={rank} WORLD_SIZE={world} "
            f"LOCAL_RANK={local_rank} LOCAL_WORLD_SIZE={local_world}"
        )
    owns = False
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(backend="gloo", timeout=WAIT_FOR_RANKS)
            owns = True
    return Ranks(rank, world, local_rank, local_world, launched=True, owns_group=owns)


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def rank_device(name: str, ranks: Ranks) -> Any:
    """The :class:`torch.device` this rank runs its model on, for a ``--device`` value.

    ``auto`` and ``cuda`` under torchrun give each local rank its own GPU (local rank ``k``
    takes ``cuda:k mod n`` of the ``n`` GPUs); ``cuda:N`` is taken as given. On the CPU,
    under torchrun, the machine's cores are split between the local ranks
    (``torch.set_num_threads(max(1, cores // local ranks))``), replacing torchrun's default
    of one thread per process. Without torchrun nothing changes.

    Raises:
        DeviceUnavailable: the device is not on this machine.
    """
    import torch

    from ..device import resolve_device

    device = resolve_device(name)
    if not ranks.launched:
        return device
    if device.type == "cuda":
        if name in ("auto", "cuda"):
            device = torch.device("cuda", ranks.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    elif device.type == "cpu":
        torch.set_num_threads(max(1, usable_cores() // ranks.local_world))
    return device
