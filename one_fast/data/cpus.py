"""How many CPU cores this process may use: its CPU affinity shared among the processes of the
run on this node (``LOCAL_WORLD_SIZE``, set by ``torchrun``). Both the trainer's intra-op
threads on the CPU and DALI's decoding threads are sized from it."""

from __future__ import annotations

import os


def available_cores() -> int:
    """The cores this process may run on (its affinity mask; the machine's count elsewhere)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def count_from_env(name: str) -> int | None:
    """The positive integer in environment variable ``name``; None when unset or empty.

    Raises:
        ValueError: set to anything but a positive integer (the message names ``name``).
    """
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise ValueError(f"{name} must be a positive integer, got {text!r}")
    return count


def local_processes() -> int:
    """Processes of this run on this node (``LOCAL_WORLD_SIZE``; 1 outside ``torchrun``).

    Raises:
        ValueError: ``LOCAL_WORLD_SIZE`` is not a positive integer.
    """
    return count_from_env("LOCAL_WORLD_SIZE") or 1


def cores_per_process() -> int:
    """This process's share of the node's cores: available cores // local processes (>= 1)."""
    return max(1, available_cores() // local_processes())


__all__ = ["available_cores", "cores_per_process", "count_from_env", "local_processes"]
