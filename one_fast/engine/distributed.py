"""Process-group set-up for ``torchrun`` or ``srun`` (DDP): NCCL on GPUs, gloo on CPU; the few
collectives the trainer needs so that every rank sees the same model, the same loss and the same
decision."""

from __future__ import annotations

import datetime
import os
import re
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

NO_BAD_STEP = -1


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: its rank, the world size, and its device."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that logs and writes checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> this process's GPU if CUDA is available, else the CPU; otherwise as named."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: CUDA is not available on this machine")
        if device.index is None:
            device = torch.device(f"cuda:{local_rank}")
    return device


SLURM_PORT_BASE = 29500  # MASTER_PORT under srun: this + the job id modulo 10000


def first_slurm_host(nodelist: str) -> str:
    """The first host of a Slurm node list: ``"gpu[03-05,9],cpu1"`` -> ``"gpu03"``."""
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if match is None:
        raise ValueError(f"SLURM_JOB_NODELIST: cannot read a host from {nodelist!r}")
    prefix, ranges = match.groups()
    if ranges is None:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0]


def slurm_rendezvous(env: dict[str, str]) -> dict[str, str]:
    """torchrun's variables for a process that ``srun`` started as one task of several.

    Under srun (``SLURM_STEP_NUM_TASKS`` > 1, no ``WORLD_SIZE`` set by torchrun) the rank is
    ``SLURM_PROCID``, the local rank ``SLURM_LOCALID``, the world ``SLURM_STEP_NUM_TASKS``;
    the rendezvous is the step's first node, on a port derived from the job id (so two jobs
    sharing a node do not collide). Variables already set win. Returns {} when not under srun.
    """
    if "WORLD_SIZE" in env or int(env.get("SLURM_STEP_NUM_TASKS", "1")) <= 1:
        return {}
    nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or "localhost"
    job = int(env.get("SLURM_JOB_ID", "0"))
    return {"WORLD_SIZE": env["SLURM_STEP_NUM_TASKS"], "RANK": env.get("SLURM_PROCID", "0"),
            "LOCAL_RANK": env.get("SLURM_LOCALID", "0"),
            "MASTER_ADDR": env.get("MASTER_ADDR") or first_slurm_host(nodelist),
            "MASTER_PORT": env.get("MASTER_PORT") or str(SLURM_PORT_BASE + job % 10000)}
def elastic_restart_count() -> int:
    """How many times torchrun has restarted this worker group (``--max-restarts``); 0 for the
    first start and outside torchrun."""
    try:
        return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    except ValueError:
        return 0


def init_distributed(device_name: str) -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1) or as one of several
    ``srun`` tasks (Slurm's variables, see :func:`slurm_rendezvous`), else run alone."""
    os.environ.update(slurm_rendezvous(dict(os.environ)))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_name, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                device_id=device if device.type == "cuda" else None,
                                **_attempt_store(rank, world_size))
    return DistInfo(rank, world_size, device)


def _attempt_store(rank: int, world_size: int) -> dict[str, Any]:
    """Under torchrun, its agent's store with keys of this start of the worker group only.

    torchrun's default (static) rendezvous keeps one store across ``--max-restarts``
    restarts, so a restarted group would find the previous group's addresses in it and connect
    to processes that are gone ("connection refused", at random); a prefix per restart keeps
    each start's keys apart. Elsewhere: ``{}`` (``init_process_group``'s own ``env://``).
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return {}
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                          world_size, is_master=False, timeout=datetime.timedelta(minutes=30))
    prefix = f"one_fast/start{elastic_restart_count()}"
    return {"store": dist.PrefixStore(prefix, store), "rank": rank, "world_size": world_size}


def all_reduce_sum(tensor: torch.Tensor) -> None:
    """Sum ``tensor`` over all processes in place (no-op when running alone)."""
    if dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)


def broadcast_buffers(module: nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics and any other state that gradients
    do not synchronise) to every rank, in place (no-op when running alone).

    DDP keeps parameters equal across ranks but each rank updates its BatchNorm statistics
    from its own shard; rank 0's are the ones its checkpoint holds, so evaluating after this
    measures the saved model on every rank.
    """
    if dist.is_initialized():
        for buffer in module.buffers():
            dist.broadcast(buffer.data, src=0)


def reduce_totals(means: dict[str, float], bad_step: int, device: torch.device
                  ) -> tuple[dict[str, float], int]:
    """The loss terms averaged over ranks and the first non-finite step on any rank.

    Args:
        means: this rank's mean loss terms (name -> value).
        bad_step: this rank's first step with a non-finite loss, or ``NO_BAD_STEP``.
        device: where the collectives run (the training device: NCCL needs CUDA tensors).

    Returns:
        ``(means averaged over ranks, the earliest bad step of any rank or NO_BAD_STEP)``,
        the same on every rank; the inputs unchanged when running alone.
    """
    if not dist.is_initialized():
        return means, bad_step
    values = torch.tensor(list(means.values()), dtype=torch.float64, device=device)
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    # No bad step on a rank counts as "later than any": the minimum is the first one anywhere.
    never = torch.iinfo(torch.int64).max
    first = torch.tensor(never if bad_step < 0 else bad_step, dtype=torch.int64, device=device)
    dist.all_reduce(first, op=dist.ReduceOp.MIN)
    world = dist.get_world_size()
    averaged = {name: v / world for name, v in zip(means, values.tolist(), strict=True)}
    return averaged, NO_BAD_STEP if int(first) == never else int(first)


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (a picklable value; ``obj`` itself when running alone)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` when running alone)."""
    if not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    """Wait for every process (no-op when running alone)."""
    if dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    """Leave the process group if this process joined one."""
    if dist.is_initialized():
        dist.destroy_process_group()
