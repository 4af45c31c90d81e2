"""Atomic, weights-only checkpoints for the trainer.

A checkpoint is one ``torch.save`` of a plain dict, e.g.::

    {"model": ..., "optimizer": ..., "schedule": ..., "epoch": int, "step": int,
     "rng": capture_rng_state(device), "config": dataclasses.asdict(cfg)}

Why ``weights_only=True`` on load: it refuses to run arbitrary pickled code, so a resume never
executes anything a checkpoint file smuggles in. It accepts tensors, dicts/lists/tuples/sets,
python scalars (including the big ints of numpy bit-generator states), ``torch.device``/``dtype``,
``OrderedDict``/``Counter`` (optimizer and LR-scheduler state dicts) and python's
``random.getstate()`` tuple. It does *not* accept numpy arrays, so
:func:`one_fast.engine.rng.capture_rng_state` stores numpy's state with its arrays turned into
byte tensors (:func:`one_fast.engine.rng.numpy_to_safe`), and
:func:`save_checkpoint` turns a dataclass ``config`` into a dict. Anything else that a weights-only
load would refuse makes :func:`save_checkpoint` fail *before* the previous checkpoint is replaced
(the temp file is read back with ``weights_only=True``), never at resume time.

Atomicity: the state is written to a temp file in the run directory, flushed and fsynced,
``os.replace``-d onto the target, and the directory is fsynced; any failure removes the temp file
and leaves the previous checkpoint byte-for-byte intact.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..files import atomic_write

CHECKPOINT_NAME = "checkpoint.pt"

class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


_MISSING = _Missing()


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: corrupt, truncated, unsafe, or for another model."""


# --------------------------------------------------------------------------------------------
# save / load


def _plain_config(config: Any) -> Any:
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return dataclasses.asdict(config)
    return config


def _json_default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor) and obj.numel() == 1:
        return obj.item()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=str)
    return str(obj)


def _metadata(state: Mapping[str, Any], checkpoint_file: str) -> dict[str, Any]:
    return {
        "checkpoint": checkpoint_file,
        "epoch": state.get("epoch"),
        "step": state.get("step"),
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "torch": torch.__version__,
        "config": state.get("config"),
    }


def save_checkpoint(
    run_dir: str | os.PathLike,
    state: Mapping[str, Any],
    filename: str = CHECKPOINT_NAME,
    *,
    metadata: bool = True,
    verify: bool = True,
) -> Path:
    """Save ``state`` atomically to ``run_dir/filename`` (and metadata to ``<stem>.json``).

    The file is written to a temp file, read back with ``torch.load(weights_only=True)`` (so a
    state that could not be resumed from fails here, not at resume time), fsynced and renamed
    onto the target. On any failure the previous checkpoint is untouched and no temp file remains.

    Args:
        run_dir: directory of the run (created if missing).
        state: plain dict of tensors, state dicts, python scalars/containers and
            :func:`one_fast.engine.rng.capture_rng_state` output. A dataclass under
            ``"config"`` is stored as a dict.
        filename: checkpoint file name inside ``run_dir``.
        metadata: also write ``<stem>.json`` (epoch, step, config, time, torch version),
            atomically, for humans; it is informational and never read by :func:`load_checkpoint`.
        verify: read the temp file back with ``weights_only=True`` before the rename (costs one
            read of the file from the page cache; turn off only for very large states).

    Returns:
        Path of the written checkpoint.

    Raises:
        CheckpointError: the state holds objects a weights-only load refuses (nothing replaced).
        OSError: the write failed (e.g. disk full); the previous checkpoint is intact.
    """
    if not isinstance(state, Mapping):
        raise TypeError(f"state must be a dict, got {type(state).__name__}")
    state = dict(state)
    if "config" in state:
        state["config"] = _plain_config(state["config"])
    target = Path(run_dir) / filename

    def write(f) -> None:
        _save(state, f)
        if not verify:
            return
        f.flush()
        f.seek(0)
        try:  # verify what was written is loadable the way load_checkpoint loads it
            torch.load(f, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            raise CheckpointError(
                f"refusing to write {target}: the state holds objects that "
                f"torch.load(weights_only=True) cannot load ({_describe(err)}); store plain "
                "dicts/lists/tensors (numpy arrays via numpy_to_safe)") from err

    atomic_write(target, write)
    if metadata:
        text = json.dumps(_metadata(state, filename), indent=2, default=_json_default)
        atomic_write(target.with_suffix(".json"), lambda f: f.write(text.encode() + b"\n"))
    return target


def _save(state: Mapping[str, Any], f) -> None:
    """``torch.save``, but a failed write surfaces as the OSError that caused it.

    torch's zip writer reports a failing ``f.write`` (disk full, quota, I/O error) as
    ``RuntimeError: [enforce fail at inline_container.cc...] unexpected pos``, with the
    ``OSError`` (e.g. ENOSPC) only as the exception's context.
    """
    try:
        torch.save(state, f)
    except RuntimeError as err:
        cause = err.__cause__ or err.__context__
        if isinstance(cause, OSError):
            raise cause from None
        raise


def _describe(err: BaseException) -> str:
    """The informative part of a torch.load error, on one line."""
    text = str(err)
    marker = "WeightsUnpickler error:"
    if marker in text:  # skip torch's generic preamble, keep the actual reason
        text = text.split(marker, 1)[1]
        for stop in ("Please use", "Check the documentation"):
            text = text.split(stop, 1)[0]
    text = " ".join(text.split()).split(". ", 1)[0]  # torch appends paragraphs of advice
    if len(text) > 300:
        text = text[:300] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _resolve_checkpoint_path(path_or_run_dir: str | os.PathLike) -> Path:
    path = Path(path_or_run_dir)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    return path


def checkpoint_progress(path_or_run_dir: str | os.PathLike) -> tuple[int, dict[str, Any]]:
    """The epochs a checkpoint holds and its stored config, without reading its tensors.

    The file is memory-mapped (``torch.load(mmap=True)``), so this costs a few milliseconds
    even for a large network: what the table runner and the run-folder checks read to decide
    whether a run is finished (the checkpoint, not its ``.json`` companion, is the record of
    how far a run got).

    Returns:
        ``(epoch, config)``; ``config`` is ``{}`` for a checkpoint saved without one.

    Raises:
        FileNotFoundError: no checkpoint there.
        CheckpointError: unreadable, or without an integer ``"epoch"``.
    """
    path = _resolve_checkpoint_path(path_or_run_dir)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # weights-only: nothing ran; any failure means "unusable"
        raise CheckpointError(
            f"checkpoint {path} is unreadable (truncated or corrupt?): {_describe(err)}"
        ) from err
    epoch = state.get("epoch") if isinstance(state, dict) else None
    if not isinstance(epoch, int):
        raise CheckpointError(f"checkpoint {path} does not say which epoch it holds")
    config = state.get("config")
    return epoch, dict(config) if isinstance(config, Mapping) else {}


def _same(a: Any, b: Any) -> bool:
    # Tuples and lists compare equal by content (a tuple field may come back as a list).
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def check_config(config: Mapping[str, Any], expected: Mapping[str, Any], path: Path) -> None:
    """Raise :class:`CheckpointError` listing every ``expected`` field that ``config`` differs in.

    Args:
        config: the checkpoint's stored config (a dict).
        expected: model-shaping fields requested now, e.g. ``{"depth": 32, "num_branches": 3}``.
        path: checkpoint path, for the message.
    """
    mismatched = [
        f"{key}: checkpoint={config.get(key, _MISSING)!r}, requested={value!r}"
        for key, value in expected.items()
        if key not in config or not _same(config[key], value)
    ]
    if mismatched:
        raise CheckpointError(
            f"checkpoint {path} was saved for a different model:\n  " + "\n  ".join(mismatched))


def load_checkpoint(
    path_or_run_dir: str | os.PathLike,
    *,
    expected: Mapping[str, Any] | None = None,
    map_location: Any = "cpu",
) -> dict[str, Any]:
    """Load a checkpoint saved by :func:`save_checkpoint`, safely (``weights_only=True``).

    Args:
        path_or_run_dir: a checkpoint file, or a run directory holding ``checkpoint.pt``.
        expected: model-shaping fields (depth, block, num_branches, num_classes, ...) that must
            equal those in ``state["config"]``; every mismatch is listed in one error.
        map_location: passed to ``torch.load`` (default: load onto the CPU).

    Returns:
        The saved state dict.

    Raises:
        FileNotFoundError: no checkpoint at that path (the message names it).
        CheckpointError: the file is truncated, corrupt, holds unsafe objects, is not a dict,
            or was saved for a different model than ``expected`` describes.
    """
    path = _resolve_checkpoint_path(path_or_run_dir)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"checkpoint {path} is corrupt or holds objects that a weights-only load refuses "
            f"({_describe(err)})") from err
    except Exception as err:
        # Garbled files surface as many types: RuntimeError from the zip reader ("failed finding
        # central directory" when truncated), EOFError (empty), KeyError, UnicodeDecodeError...
        # The load is weights-only, so nothing in the file ran; any failure means "unusable".
        raise CheckpointError(
            f"checkpoint {path} is unreadable (truncated or corrupt?): {_describe(err)}"
        ) from err
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a dict")
    if expected:
        config = state.get("config")
        if not isinstance(config, Mapping):
            raise CheckpointError(f"checkpoint {path} has no config to check the model against")
        check_config(config, expected, path)
    return state
