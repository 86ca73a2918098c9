"""A costly phase over N processes, on Lightning Fabric with the Trainer's flags (accelerator, devices, num_nodes,
strategy): each process takes its shard of the work, and what they produce meets in a store every process can
write (per-entry atomic files, an index merged under a lock).

Launch as Fabric does: `--strategy ddp` re-runs the command once per device; `ddp_spawn` spawns the processes from
Python; under `torchrun` (or a cluster's launcher) each process is already there and Fabric joins them.
"""

from __future__ import annotations

import os
from functools import partial
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Shard:
    """This process's place among all of them."""

    rank: int = 0
    world: int = 1
    device: str | None = None  # the device Fabric gave this process (None: the command's own choice)
    barrier: Callable[[], None] | None = None
    all_gather: Callable[[object], list] | None = None

    def take(self, items: Sequence) -> list:
        """Every world-th item from the rank-th: the same split on every process, and one process takes all."""
        return list(items)[self.rank :: self.world]

    def gather(self, value) -> list:
        """Every process's `value` (picklable), in rank order, on every process; one process: `[value]`."""
        return [value] if self.all_gather is None else self.all_gather(value)

    def in_order(self, mine: Iterable[tuple[int, object]]) -> list:
        """The values of every process's (index, value) pairs, in index order, on every process: what one process
        that made them all holds."""
        pairs = (pair for part in self.gather(list(mine)) for pair in part)
        return [value for _, value in sorted(pairs, key=lambda pair: pair[0])]

    def first_says(self, log: Callable) -> Callable:
        """`log` on the first process and silence on the others: one line per event, not one per process."""
        return log if self.rank == 0 else _silent

    def wait(self) -> None:
        """Until every process is here (what one process reads, all have read, before any writes)."""
        if self.barrier is not None:
            self.barrier()


@dataclass(frozen=True)
class Processes:
    """Lightning's flags for how many processes run a phase and where."""

    accelerator: str = "cpu"
    devices: int | str = 1
    num_nodes: int = 1
    strategy: str = "auto"

    @property
    def single(self) -> bool:
        return str(self.devices) == "1" and self.num_nodes == 1 and "WORLD_SIZE" not in os.environ

    def launch(self, work: Callable, *args):
        """`work(shard, *args)` on every process, then a barrier; one process runs it directly. Returns this process's
        result (with ddp_spawn, rank 0's)."""
        if self.single:
            return work(Shard(), *args)
        from lightning.fabric import Fabric  # Lightning loads in seconds; a single process never needs it

        fabric = Fabric(accelerator=self.accelerator, devices=self.devices, num_nodes=self.num_nodes,
                        strategy=self.strategy)
        # the work and its arguments travel as one object: Fabric walks launch arguments, and refuses frozen dataclasses
        return fabric.launch(partial(_on_rank, work=work, args=args, num_nodes=self.num_nodes))


def _on_rank(fabric, work: Callable, args: tuple, num_nodes: int):
    if fabric.device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:  # else the user's count holds
        # processes sharing a CPU split its cores instead of each taking them all
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, fabric.world_size // num_nodes)))
    device = None if fabric.device.type == "cpu" else str(fabric.device)
    result = work(Shard(fabric.global_rank, fabric.world_size, device, fabric.barrier, _gather_objects), *args)
    fabric.barrier()
    _leave_group()
    return result


def _leave_group() -> None:
    """Take the process group down before the process ends: a group left to the interpreter's exit can abort it."""
    import torch.distributed as dist  # only a process group of several is left

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _gather_objects(value) -> list:
    """The process group's all-gather of Python objects (the group Fabric set up; values travel between our own
    processes only)."""
    import torch.distributed as dist  # only a process group of several gathers

    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def _silent(*args) -> None:
    """The log of every process but the first."""
