"""Random-number-generator state for exact resume: capture and restore every generator a run uses.

Python's ``random``, numpy's global generator, torch's CPU generator, the CUDA generator of the
training device, and any named extra ``torch.Generator``. numpy's state holds arrays, which a
weights-only checkpoint load refuses, so they are stored as raw-byte tensors
(:func:`numpy_to_safe`) and rebuilt exactly (:func:`numpy_from_safe`).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch


def numpy_to_safe(obj: Any) -> Any:
    """Turn numpy arrays/scalars inside ``obj`` into weights-only-loadable values, losslessly.

    Arrays become ``{"__ndarray__": uint8 tensor of the raw bytes, "dtype": str, "shape": list}``;
    numpy scalars become python scalars; tuples, lists and dicts are walked.

    Args:
        obj: e.g. ``np.random.get_state()`` (legacy tuple) or a bit generator's ``.state`` dict.

    Returns:
        The converted structure; :func:`numpy_from_safe` inverts it.
    """
    if isinstance(obj, np.ndarray):
        arr = np.ascontiguousarray(obj)
        raw = torch.frombuffer(bytearray(arr.tobytes()), dtype=torch.uint8)
        return {"__ndarray__": raw, "dtype": arr.dtype.str, "shape": list(arr.shape)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {key: numpy_to_safe(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(numpy_to_safe(value) for value in obj)
    return obj


def numpy_from_safe(obj: Any) -> Any:
    """Invert :func:`numpy_to_safe`.

    Args:
        obj: a structure produced by :func:`numpy_to_safe`.

    Returns:
        The same structure with numpy arrays restored (own memory, writable).
    """
    if isinstance(obj, dict):
        if "__ndarray__" in obj:
            raw = obj["__ndarray__"].cpu().numpy().tobytes()
            return np.frombuffer(raw, dtype=np.dtype(obj["dtype"])).reshape(obj["shape"]).copy()
        return {key: numpy_from_safe(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(numpy_from_safe(value) for value in obj)
    return obj


def _cuda_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def capture_rng_state(
    device: torch.device | str = "cpu",
    *,
    generators: Mapping[str, torch.Generator] | None = None,
) -> dict[str, Any]:
    """Snapshot every global RNG the trainer draws from, in a weights-only-loadable form.

    Args:
        device: the training device; on CUDA that device's generator is captured too.
        generators: extra named ``torch.Generator`` objects (e.g. the on-device data-order
            generator) to capture with ``get_state()``.

    Returns:
        ``{"python": random.getstate(), "numpy": numpy_to_safe(np.random.get_state()),
        "torch": ByteTensor, "cuda": ByteTensor (CUDA only), "generators": {name: ByteTensor}}``.
    """
    device = torch.device(device)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": numpy_to_safe(np.random.get_state()),
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(_cuda_index(device))
    if generators:
        state["generators"] = {name: gen.get_state() for name, gen in generators.items()}
    return state


def restore_rng_state(
    state: Mapping[str, Any],
    device: torch.device | str = "cpu",
    *,
    generators: Mapping[str, torch.Generator] | None = None,
) -> None:
    """Restore RNG state captured by :func:`capture_rng_state`.

    The CUDA generator is restored only when ``device`` is CUDA and the state has one (a state
    captured on the CPU leaves the CUDA generator as seeded); a CUDA state restored on the CPU
    is ignored.

    Args:
        state: the dict returned by :func:`capture_rng_state` (possibly loaded from disk).
        device: the training device now.
        generators: the same named generators passed at capture time; each name must be present
            in ``state`` (``KeyError`` otherwise, naming it).
    """
    device = torch.device(device)
    random.setstate(_as_tuple(state["python"]))
    np.random.set_state(numpy_from_safe(state["numpy"]))
    torch.set_rng_state(state["torch"].cpu())
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), _cuda_index(device))
    if generators:
        saved = state.get("generators", {})
        for name, gen in generators.items():
            if name not in saved:
                raise KeyError(f"RNG state has no generator named {name!r} (has {sorted(saved)})")
            gen.set_state(saved[name].cpu())


def _as_tuple(obj: Any) -> Any:
    # random.setstate needs tuples all the way down; be lenient if a list came back.
    if isinstance(obj, (list, tuple)):
        return tuple(_as_tuple(value) for value in obj)
    return obj
