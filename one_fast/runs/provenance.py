"""``run.json``: where a run came from, written when it starts and updated when it stops.

One JSON object per run folder, always replaced atomically::

    {
      "format": 1,
      "config": {...},               # the fully resolved config of the latest invocation
      "config_hash": "71f9b35717ca", # one_fast.config.config_hash: equal for the same experiment
      "status": "running" | "finished" | "interrupted" | "failed",
      "error": str,                  # failed: the one-line reason
      "epochs_finished": int,        # as the latest invocation left it
      "invocations": [               # every start of the run, oldest first
        {"command": [...], "cwd": str, "code": {"commit": str, "dirty": bool} | {"version": str},
         "versions": {"python", "torch", "triton", "cuda", "cudnn", "dali"},
         "host": str, "world_size": int, "devices": [str per rank], "started": iso-time,
         "ended": iso-time | null, "from_epoch": int, "epochs_finished": int, "status": ...,
         "resumed_from": str (when it continued another folder's run),
         "runtime": {...} (what the trainer resolved: loss backend, compile, CUDA graphs,
                        autocast, channels_last, cudnn.benchmark, CPU threads),
         "elastic_restart": int (torchrun restarts of the worker group, when > 0)}
      ]
    }

How far a run got is the checkpoint's to say (:func:`one_fast.engine.checkpoint.
checkpoint_progress`): a crash between writing the checkpoint and updating this file leaves a
"running" status beside a later checkpoint, never the other way round. This file is the run's
provenance: the table runner refuses to count a run whose ``run.json`` is missing or unreadable.
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from ..config import TrainConfig, config_hash, config_to_dict
from ..files import atomic_write

PROVENANCE_NAME = "run.json"
FORMAT = 1
RUNNING, FINISHED, INTERRUPTED, FAILED = "running", "finished", "interrupted", "failed"


class ProvenanceError(ValueError):
    """A ``run.json`` that cannot be read (the message names the file)."""


@functools.lru_cache(maxsize=1)
def code_version() -> dict[str, object]:
    """The code that runs: ``{"commit": 12-hex, "dirty": bool}`` from the package's git checkout,
    or ``{"version": one_fast.__version__}`` where there is none."""
    root = Path(__file__).resolve().parents[2]

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(root), *args], capture_output=True,
                                 text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout if out.returncode == 0 else None

    commit = git("rev-parse", "--short=12", "HEAD")
    if commit and commit.strip():
        status = git("status", "--porcelain", "--untracked-files=no")
        return {"commit": commit.strip(), "dirty": bool(status and status.strip())}
    from .. import __version__

    return {"version": __version__}


def code_label(code: dict[str, Any] | None) -> str:
    """``abc123def456``, ``abc123def456-dirty`` or ``one_fast 0.3.0`` (``unknown`` without)."""
    if not code:
        return "unknown"
    if "commit" in code:
        return f"{code['commit']}{'-dirty' if code.get('dirty') else ''}"
    return f"one_fast {code.get('version', '?')}"


def software_versions(dataset: str) -> dict[str, str | None]:
    """Python, torch, triton, CUDA and cuDNN versions, and DALI's for ImageNet runs."""
    versions: dict[str, str | None] = {
        "python": platform.python_version(), "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": str(torch.backends.cudnn.version()) if torch.backends.cudnn.is_available()
        else None}
    try:
        import triton

        versions["triton"] = triton.__version__
    except ImportError:
        versions["triton"] = None
    if dataset == "imagenet":
        try:
            from nvidia import dali

            versions["dali"] = dali.__version__
        except ImportError:
            versions["dali"] = None
    return versions


def device_name(device: torch.device) -> str:
    """``cuda:0 NVIDIA H100 80GB HBM3`` or ``cpu (x86_64, 2 cores)``: what one rank ran on."""
    if device.type == "cuda":
        return f"{device} {torch.cuda.get_device_name(device)}"
    return f"{device} ({platform.machine()}, {os.cpu_count()} cores)"


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).astimezone().isoformat(
        timespec="seconds")


def read_provenance(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The run's ``run.json``, or None when the folder has none.

    Raises:
        ProvenanceError: the file exists but is not a ``run.json`` this package wrote (corrupt,
            truncated, or of an unknown format), naming it.
    """
    path = Path(run_dir) / PROVENANCE_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as err:
        raise ProvenanceError(f"{path} is unreadable ({err})") from err
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(
            data.get("config"), dict) or not isinstance(data.get("invocations"), list):
        raise ProvenanceError(f"{path} is not a run.json of format {FORMAT}")
    return data


def _write(run_dir: Path, data: dict[str, Any]) -> None:
    text = json.dumps(data, indent=2, default=str) + "\n"
    atomic_write(run_dir / PROVENANCE_NAME, lambda f: f.write(text.encode("utf-8")))


def start_provenance(run_dir: str | os.PathLike, config: TrainConfig, *, from_epoch: int,
                     world_size: int, devices: list[str],
                     history: str | os.PathLike | None = None,
                     elastic_restart: int = 0) -> tuple[dict[str, Any], str]:
    """Write ``run_dir/run.json`` for an invocation that is starting.

    Args:
        run_dir: the run folder.
        config: the resolved config of this invocation.
        from_epoch: epochs already trained (the resumed checkpoint's; 0 for a new run).
        world_size: processes training together.
        devices: each rank's :func:`device_name`.
        history: the folder whose ``run.json`` holds the earlier invocations (the resumed run;
            ``run_dir`` itself when continuing in place); None for a new run.
        elastic_restart: torchrun's restart count of the worker group.

    Returns:
        The provenance written, and a note for the user ("" or one line saying the earlier
        history could not be read and starts anew).
    """
    run_dir = Path(run_dir)
    earlier: list[dict[str, Any]] = []
    note = ""
    if history is not None:
        try:
            previous = read_provenance(history)
        except ProvenanceError as err:
            previous = None
            note = (f"warning: {err}; the run's earlier provenance is lost, "
                    f"{run_dir / PROVENANCE_NAME} starts anew")
        earlier = list(previous["invocations"]) if previous else []
    invocation: dict[str, Any] = {
        "command": list(getattr(sys, "orig_argv", [sys.executable, *sys.argv])),
        "cwd": os.getcwd(), "code": code_version(),
        "versions": software_versions(config.dataset), "host": platform.node(),
        "world_size": world_size, "devices": devices, "started": _now(), "ended": None,
        "from_epoch": from_epoch, "epochs_finished": from_epoch, "status": RUNNING}
    if history is not None and Path(history).resolve() != run_dir.resolve():
        invocation["resumed_from"] = str(history)
    if elastic_restart:
        invocation["elastic_restart"] = elastic_restart
    data = {"format": FORMAT, "config": config_to_dict(config),
            "config_hash": config_hash(config), "status": RUNNING,
            "epochs_finished": from_epoch, "invocations": [*earlier, invocation]}
    _write(run_dir, data)
    return data, note


def record_runtime(run_dir: str | os.PathLike, data: dict[str, Any],
                   runtime: dict[str, Any]) -> None:
    """Add what the trainer resolved for this invocation (``runtime``: the loss backend, compile,
    CUDA graphs, autocast dtype, memory format, ``cudnn.benchmark``, CPU threads) to the latest
    invocation of ``data`` (what :func:`start_provenance` returned, updated in place) and
    rewrite ``run.json``."""
    data["invocations"][-1]["runtime"] = runtime
    _write(Path(run_dir), data)


def finish_provenance(run_dir: str | os.PathLike, data: dict[str, Any], status: str,
                      epochs_finished: int, error: str = "") -> None:
    """Record how the invocation that :func:`start_provenance` began has ended.

    Args:
        run_dir: the run folder.
        data: what :func:`start_provenance` returned (updated in place).
        status: ``FINISHED``, ``INTERRUPTED`` or ``FAILED``.
        epochs_finished: epochs the run's checkpoint holds now.
        error: for ``FAILED``, the one-line reason.

    Raises:
        OSError: the file could not be written (the previous ``run.json`` stays intact).
    """
    last = data["invocations"][-1]
    last.update(ended=_now(), epochs_finished=epochs_finished, status=status)
    data.update(status=status, epochs_finished=epochs_finished)
    if error:
        last["error"] = data["error"] = error
    else:
        data.pop("error", None)
    _write(Path(run_dir), data)


def commits(data: dict[str, Any] | None) -> list[str]:
    """The distinct :func:`code_label` of every invocation of a run, oldest first."""
    labels: list[str] = []
    for invocation in (data or {}).get("invocations", []):
        label = code_label(invocation.get("code") if isinstance(invocation, dict) else None)
        if label not in labels:
            labels.append(label)
    return labels


def provenance_line(run_dir: str | os.PathLike) -> str:
    """One line on where a run came from, for the commands that read a run: ``trained by
    commit abc123def456, config 71f9b35717ca`` (or why that cannot be said)."""
    try:
        data = read_provenance(run_dir)
    except ProvenanceError as err:
        return f"provenance unknown: {err}"
    if data is None:
        return f"provenance unknown: {Path(run_dir) / PROVENANCE_NAME} is missing (a run " \
               "trained before run.json was written)"
    code = " + ".join(commits(data)) or "unknown code"
    kind = "commits" if " + " in code else "commit" if not code.startswith("one_fast") else ""
    return f"trained by {kind + ' ' if kind else ''}{code}, config {data.get('config_hash')}"


__all__ = ["FAILED", "FINISHED", "INTERRUPTED", "PROVENANCE_NAME", "RUNNING", "ProvenanceError",
           "code_label", "code_version", "commits", "device_name", "finish_provenance",
           "provenance_line", "read_provenance", "software_versions", "start_provenance"]
