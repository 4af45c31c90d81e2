"""Training-engine pieces the trainer composes: checkpoints, RNG state, metrics, plots, progress."""

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .metrics import (
    MetricsLogger,
    gpu_telemetry,
    peak_memory_key,
    peak_memory_mb,
    peak_memory_record,
    read_metrics,
    reset_peak_memory,
)
from .plot import plot_metrics
from .progress import EpochProgress
from .rng import capture_rng_state, numpy_from_safe, numpy_to_safe, restore_rng_state

__all__ = [
    "CheckpointError",
    "EpochProgress",
    "MetricsLogger",
    "capture_rng_state",
    "gpu_telemetry",
    "load_checkpoint",
    "numpy_from_safe",
    "numpy_to_safe",
    "peak_memory_key",
    "peak_memory_mb",
    "peak_memory_record",
    "plot_metrics",
    "read_metrics",
    "reset_peak_memory",
    "restore_rng_state",
    "save_checkpoint",
]
