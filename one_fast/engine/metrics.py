"""Per-epoch metrics: ``metrics.jsonl``, optional TensorBoard scalars, GPU telemetry, memory.

Record format — one JSON object per line of ``run_dir/metrics.jsonl``, one per epoch::

    {
      "epoch": int,                 # 1-based epoch just finished (TensorBoard global step)
      "step": int,                  # optimizer steps taken so far (all epochs)
      "lr": float,                  # learning rate used in this epoch (its last value)
      "kl_weight": float,           # w in the loss, after ramp-up
      "train": {                    # means over the epoch's training batches: the method's
                                    # term_names ("loss" always; the others where it has them)
        "loss": float,              # total, e.g. for ONE ce_branches + ce_ensemble + w·T²·kl
        "ce_branches": float,       # Σ_i CE(z_i, y) over branches / members / the student
        "ce_ensemble": float,       # ONE only: CE(z_e, y)
        "kl": float                 # one, kd, dml: the distillation term before w·T²
      },
      "test_acc": {                 # optional: only on epochs that evaluate
        "branch_0": float, ..., "branch_{m-1}": float,   # top-1 as a fraction in [0, 1]
        "ensemble": float           # one: gated (ONE-E); dml, ensemble: averaged probabilities;
                                    # absent for baseline and kd
      },
      "costs": {...}                # first record of each invocation: Costs.to_dict() (FLOPs
                                    # per image, 2 x MACs; parameters), kd adds teacher_flops
      "images_per_s": float,        # training throughput of the epoch (timed after a sync)
      "epoch_time_s": float,
      "step_images_per_s": float,   # optional, loaders with input stats (ImageNet): the
                                    #   throughput with the time spent waiting for data removed
      "input": {                    # optional, the same loaders: the input pipeline's side
        "images_per_s": float,      #   delivered images/s (all processes; the pipeline's own
                                    #   rate when wait_fraction is ~1, a lower bound otherwise)
        "wait_fraction": float,     #   of the epoch, the step waited for data (rank 0; ~0 when
                                    #   the pipeline keeps ahead)
        "build_s": float            #   building the epoch's pipeline (part of the wait)
      },
      "peak_memory_mb": float,      # CUDA: torch.cuda.max_memory_allocated (see peak_memory_key)
      "peak_rss_mb": float,         #   CPU: the process's max RSS instead (different quantity,
                                    #   hence a different key; only one of the two is present)
      "gpu": {...}                  # optional: gpu_telemetry(device), absent without NVML
    }

Non-finite floats are written as ``null`` (strict JSON has no NaN). Every numeric leaf becomes a
TensorBoard scalar tagged by its path (``train/loss``, ``test_acc/branch_0``, ``gpu/power_w``).
"""

from __future__ import annotations

import json
import math
import numbers
import os
import sys
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..files import atomic_write

try:
    import resource
except ImportError:  # Windows
    resource = None

METRICS_NAME = "metrics.jsonl"


# --------------------------------------------------------------------------------------------
# JSONL logging


def _plain(value: Any, where: str) -> Any:
    """Make ``value`` JSON-safe: tensors/numpy scalars → python, non-finite floats → None."""
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"metrics keys must be strings, got {key!r} at {where or 'root'}")
            out[key] = _plain(item, f"{where}/{key}" if where else key)
        return out
    if isinstance(value, (list, tuple)):
        return [_plain(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise TypeError(f"metric {where} is a tensor of shape {tuple(value.shape)}")
        value = value.item()
    elif isinstance(value, np.generic) or (isinstance(value, np.ndarray) and value.size == 1):
        value = value.item()
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, numbers.Real):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"metric {where} has unsupported type {type(value).__name__}")


def flatten_scalars(record: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, float]]:
    """Yield ``(tag, value)`` for every numeric leaf of a (nested) record.

    Args:
        record: a metrics record; bools, strings, None and lists are skipped.
        prefix: tag prefix (used in recursion).

    Returns:
        An iterator of ``("train/loss", 0.42)``-style pairs.
    """
    for key, value in record.items():
        tag = f"{prefix}/{key}" if prefix else key
        if isinstance(value, Mapping):
            yield from flatten_scalars(value, tag)
        elif isinstance(value, numbers.Real) and not isinstance(value, bool):
            yield tag, float(value)


class MetricsLogger:
    """Append one JSON line per record to ``run_dir/metrics.jsonl`` (and TensorBoard scalars).

    Appends, so a resumed run continues the same file. With ``enabled=False`` (DDP ranks other
    than 0) nothing is created or written and every method is a no-op.

    Args:
        run_dir: directory of the run (created if missing).
        enabled: write anything at all.
        tensorboard: also write every numeric leaf as a scalar under ``run_dir/tensorboard``
            with global step ``record["epoch"]``; needs ``pip install tensorboard``.
    """

    def __init__(self, run_dir: str | os.PathLike, *, enabled: bool = True,
                 tensorboard: bool = False) -> None:
        self.enabled = enabled
        self.path = Path(run_dir) / METRICS_NAME
        self._file = None
        self._writer = None
        self._count = 0
        if not enabled:
            return
        if tensorboard:
            self._writer = _summary_writer(Path(run_dir) / "tensorboard")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")  # closed by close()

    def log(self, record: Mapping[str, Any]) -> None:
        """Write one record: a JSON line (flushed) and, if enabled, TensorBoard scalars.

        Args:
            record: dict following the module's record format; values may be python or numpy
                scalars, one-element tensors, strings, None and nested dicts/lists of those.
        """
        if not self.enabled:
            return
        if self._file is None:
            raise RuntimeError(f"MetricsLogger for {self.path} is closed")
        plain = _plain(record, "")
        self._file.write(json.dumps(plain, allow_nan=False) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())  # the record is on disk before the epoch's checkpoint
        if self._writer is not None:
            step = plain.get("epoch")
            step = int(step) if isinstance(step, int) else self._count
            for tag, value in flatten_scalars(plain):
                if tag != "epoch":
                    self._writer.add_scalar(tag, value, global_step=step)
            self._writer.flush()
        self._count += 1

    def close(self) -> None:
        """Close the files (idempotent)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _summary_writer(log_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise ImportError(
            "tensorboard=True (--tensorboard) needs the TensorBoard package: "
            "pip install tensorboard") from err
    return SummaryWriter(log_dir=str(log_dir))


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read the records of a ``metrics.jsonl`` (or of a run directory holding one).

    A malformed *last* line (a run killed mid-write) is skipped with a warning; a malformed line
    elsewhere is an error.

    Args:
        path: the JSONL file, or the run directory.

    Returns:
        The records, in file order.
    """
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no metrics file at {path}")
    lines = [(n, line) for n, line in enumerate(path.read_text("utf-8").splitlines(), 1)
             if line.strip()]
    records = []
    for i, (lineno, line) in enumerate(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            if i == len(lines) - 1:
                warnings.warn(f"{path}:{lineno}: skipping a truncated last record", stacklevel=2)
                break
            raise ValueError(f"{path}:{lineno}: not a JSON record ({err})") from err
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(record)}")
        records.append(record)
    return records


def trim_metrics(run_dir: str | os.PathLike, last_epoch: int,
                 into: str | os.PathLike | None = None) -> int:
    """Keep the records of epochs up to ``last_epoch`` (a checkpoint's), before a resume appends.

    A run killed mid-write leaves a partial last line, and one killed between logging an epoch
    and saving its checkpoint leaves a record the resumed run will write again; both are
    dropped, so the resumed file reads as one uninterrupted run. The file is rewritten
    atomically, and only when something is dropped.

    Args:
        run_dir: the run folder holding ``metrics.jsonl`` (a missing file keeps nothing).
        last_epoch: the last epoch to keep.
        into: write the kept records to this folder's ``metrics.jsonl`` instead (a resumed run
            continuing in another folder takes its history along).

    Returns:
        The number of records kept.

    Raises:
        ValueError: a malformed line before the last, naming the file and line number.
    """
    source = Path(run_dir) / METRICS_NAME
    target = Path(into) / METRICS_NAME if into is not None else source
    lines = source.read_text("utf-8").splitlines(keepends=True) if source.is_file() else []
    kept: list[str] = []
    last = max((n for n, line in enumerate(lines) if line.strip()), default=-1)
    for n, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            if n == last:  # the partial record of a killed write
                break
            raise ValueError(f"{source}:{n + 1}: not a JSON record ({err}); the file cannot "
                             "be continued") from err
        if isinstance(record, dict) and isinstance(record.get("epoch"), int) \
                and record["epoch"] <= last_epoch:
            kept.append(line if line.endswith("\n") else line + "\n")
    if target != source or len(kept) != len([ln for ln in lines if ln.strip()]):
        text = "".join(kept).encode("utf-8")
        atomic_write(target, lambda f: f.write(text))
    return len(kept)


# --------------------------------------------------------------------------------------------
# GPU telemetry (NVML) and memory

_nvml: Any = None  # the pynvml module once initialised; False once known to be unavailable
_nvml_handles: dict[int, Any] = {}


def _nvml_module():
    global _nvml
    if _nvml is None:
        try:
            import pynvml

            pynvml.nvmlInit()
            _nvml = pynvml
        except Exception:  # not installed, no driver, no GPU: telemetry is simply absent
            _nvml = False
    return _nvml


def _nvml_handle(nvml, index: int):
    # torch's index counts only CUDA_VISIBLE_DEVICES; NVML counts every GPU. Match by UUID.
    if index not in _nvml_handles:
        handle = None
        try:
            uuid = str(torch.cuda.get_device_properties(index).uuid)
            handle = nvml.nvmlDeviceGetHandleByUUID(
                uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}")
        except Exception:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
            physical = int(visible[index]) if index < len(visible) and \
                visible[index].strip().isdigit() else index
            handle = nvml.nvmlDeviceGetHandleByIndex(physical)
        _nvml_handles[index] = handle
    return _nvml_handles[index]


def gpu_telemetry(device: torch.device | str) -> dict[str, Any]:
    """A point sample of the GPU's state from NVML; ``{}`` whenever that is not possible.

    Never raises: a missing ``pynvml`` (package ``nvidia-ml-py``), no NVIDIA driver, a non-CUDA
    device or an unsupported query all give ``{}`` or omit that key. NVML is initialised once.
    Utilisation is NVML's own average over its last sample period (≤ 1 s), so sample it while
    the GPU is busy (e.g. just before the epoch's final sync), not after a long idle pause.

    Args:
        device: the training device.

    Returns:
        ``{"name": str, "util_percent": float, "memory_util_percent": float,
        "memory_used_mb": float, "memory_total_mb": float, "power_w": float,
        "power_limit_w": float, "temperature_c": float, "driver": str, "sm_clock_mhz": int,
        "sm_clock_max_mhz": int, "memory_clock_mhz": int}`` — keys the driver can't report are
        left out.
    """
    try:
        device = torch.device(device)
        if device.type != "cuda" or not torch.cuda.is_available():
            return {}
        nvml = _nvml_module()
        if not nvml:
            return {}
        handle = _nvml_handle(nvml, device.index if device.index is not None
                              else torch.cuda.current_device())
    except Exception:
        return {}
    queries = {
        "name": lambda: _text(nvml.nvmlDeviceGetName(handle)),
        "util_percent": lambda: float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu),
        "memory_util_percent": lambda: float(nvml.nvmlDeviceGetUtilizationRates(handle).memory),
        "memory_used_mb": lambda: nvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20,
        "memory_total_mb": lambda: nvml.nvmlDeviceGetMemoryInfo(handle).total / 2**20,
        "power_w": lambda: nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0,
        "power_limit_w": lambda: nvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000.0,
        "temperature_c": lambda: float(
            nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)),
        "driver": lambda: _text(nvml.nvmlSystemGetDriverVersion()),
        "sm_clock_mhz": lambda: nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_SM),
        "sm_clock_max_mhz": lambda: nvml.nvmlDeviceGetMaxClockInfo(handle, nvml.NVML_CLOCK_SM),
        "memory_clock_mhz": lambda: nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_MEM),
    }
    out: dict[str, Any] = {}
    for key, query in queries.items():
        try:
            out[key] = query()
        except Exception:
            pass
    return out


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def peak_memory_key(device: torch.device | str) -> str:
    """The record key :func:`peak_memory_mb` should be logged under for ``device``.

    Args:
        device: the training device.

    Returns:
        ``"peak_memory_mb"`` on CUDA (peak bytes held by torch's caching allocator) and
        ``"peak_rss_mb"`` otherwise (the process's peak resident set size — includes Python,
        libraries and everything else, so it is not comparable with the CUDA number).
    """
    return "peak_memory_mb" if torch.device(device).type == "cuda" else "peak_rss_mb"


def peak_memory_mb(device: torch.device | str) -> float | None:
    """Peak memory in MiB: the CUDA allocator's peak, or on the CPU the process's max RSS.

    Log it under :func:`peak_memory_key` (see :func:`peak_memory_record`). The CUDA peak counts
    since the last :func:`reset_peak_memory` (per-epoch peaks if reset each epoch); max RSS is a
    process-lifetime peak and cannot be reset.

    Args:
        device: the training device.

    Returns:
        The peak in MiB, or ``None`` where it can't be measured (e.g. MPS, or no ``resource``
        module on Windows).
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    if device.type != "cpu" or resource is None:
        return None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def peak_memory_record(device: torch.device | str) -> dict[str, float | None]:
    """``{peak_memory_key(device): peak_memory_mb(device)}``, ready to merge into a record.

    Args:
        device: the training device.

    Returns:
        A one-entry dict.
    """
    return {peak_memory_key(device): peak_memory_mb(device)}


def reset_peak_memory(device: torch.device | str) -> None:
    """Reset the CUDA allocator's peak (start of an epoch); a no-op on other devices.

    Args:
        device: the training device.
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
