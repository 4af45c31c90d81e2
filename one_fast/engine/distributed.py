"""Process-group set-up for ``torchrun`` or ``srun`` (DDP): NCCL on GPUs, gloo on CPU."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch
import torch.distributed as dist


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
                                device_id=device if device.type == "cuda" else None)
    return DistInfo(rank, world_size, device)


def all_reduce_sum(tensor: torch.Tensor) -> None:
    """Sum ``tensor`` over all processes in place (no-op when running alone)."""
    if dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)


def barrier() -> None:
    """Wait for every process (no-op when running alone)."""
    if dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    """Leave the process group if this process joined one."""
    if dist.is_initialized():
        dist.destroy_process_group()
