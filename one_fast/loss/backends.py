"""The ONE-loss backends, one record each: what runs, where, on what, and when "auto" picks it.

Every backend choice reads :data:`BACKENDS`: ``one_loss`` and ``ONELoss`` (the per-row terms),
``fused_linear_one_loss`` (the per-chunk kernel), :func:`available_backends`, and every message
about a backend that cannot run (:func:`unavailable_reason`, which the trainer reports too).

* ``"triton"`` -- one fused Triton kernel for the terms and the gradients
  (:mod:`one_fast.loss.triton_kernel`): CUDA devices, and CPU tensors under Triton's interpreter
  (``TRITON_INTERPRET=1``, for tests). triton is an optional dependency.
* ``"native"`` -- the same fused operator in C++/CUDA (:mod:`one_fast.loss.native`, sources in
  ``kernels/``), built at install time: the CPU always, CUDA when built with nvcc.
* ``"reference"`` -- plain PyTorch, the specification (:mod:`one_fast.loss.reference`): any
  device, dtype, number of branches and temperature.

``backend="auto"`` takes the first backend of :data:`BACKENDS` that it may pick on the device and
that takes the inputs. The order: native before the reference because it is faster on the CPU
(BENCHMARKS.md); triton first on CUDA, an order for GPU timings to confirm. A backend named
explicitly that cannot take the inputs is an error saying why, never a silent fallback.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import native, reference, reference_fused
from .terms import RowTerms

TRITON_INSTALLED = importlib.util.find_spec("triton") is not None
if TRITON_INSTALLED:  # an optional dependency, imported here only
    from . import triton_kernel

RowTermsFn = Callable[..., RowTerms]
FusedOp = Callable[..., tuple[torch.Tensor, ...]]

# Highest temperature the fused backends are trusted at. They compute the KL in one pass as a
# difference of log-sum-exps, whose float32 rounding (~eps * max|z| / T) does not shrink with the
# KL itself (~Var(z) / T^2): its relative error grows in proportion to T (figures in
# BENCHMARKS.md). The reference computes the KL cancellation-free at high temperatures
# (reference.softened_kl), so "auto" picks it above this temperature.
FUSED_MAX_TEMPERATURE = 100.0
_FUSED_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_NATIVE_BUILD = ("`pip install --no-build-isolation -e .` (torch installed first, and a C++ "
                 "compiler)")


@dataclass(frozen=True)
class Backend:
    """One loss backend.

    Attributes:
        name: the value of ``backend=`` that selects it.
        row_terms: ``one_loss``'s entry point, (logits, gate, target, temperature, kl_weight,
            detach_teacher, ignore_index) -> :class:`~one_fast.loss.terms.RowTerms`; None where
            this installation cannot run the backend at all.
        fused_op: ``fused_linear_one_loss``'s per-chunk kernel, under the contract of
            :mod:`one_fast.loss.fused_op`; None where this installation cannot run it at all.
        device_types: the device types it runs on (None: any).
        dtypes: the logits and gate dtypes it takes (None: any floating dtype).
        missing: given a device of those types, None if this installation can run the backend
            there, else what it lacks (one line).
        max_branches: the most branches m it takes (None: no limit).
        max_temperature: the highest temperature it is accurate at in float32 (None: any).
        auto_device_types: the device types where "auto" may pick it (None: wherever it runs).
    """

    name: str
    row_terms: RowTermsFn | None
    fused_op: FusedOp | None
    device_types: tuple[str, ...] | None
    dtypes: tuple[torch.dtype, ...] | None
    missing: Callable[[torch.device], str | None]
    max_branches: int | None = None
    max_temperature: float | None = None
    auto_device_types: tuple[str, ...] | None = None

    def unavailable_reason(self, device: torch.device | str) -> str | None:
        """None if this backend can run on ``device`` here, else why not (one line)."""
        device = torch.device(device)
        if self.device_types is not None and device.type not in self.device_types:
            return (f"the {self.name} backend runs on {' and '.join(self.device_types)} devices "
                    f"only, not {device.type}")
        return self.missing(device)

    def auto_may_pick(self, device: torch.device) -> bool:
        """Whether "auto" may pick this backend on ``device`` (when it can run there)."""
        return self.auto_device_types is None or device.type in self.auto_device_types


def _triton_missing(device: torch.device) -> str | None:
    if not TRITON_INSTALLED:
        return ("triton is not installed (an optional dependency: pip install triton, or the "
                "[triton] extra of one_fast)")
    # triton.jit decides interpreter-or-compiler when the kernel is defined, at import.
    interpreted = triton_kernel.INTERPRETED and os.environ.get("TRITON_INTERPRET") == "1"
    if device.type == "cpu" and not interpreted:
        return ("the Triton kernel runs on the CPU only through Triton's interpreter: set "
                "TRITON_INTERPRET=1 before one_fast is imported (slow; for tests)")
    return None


def _native_load_reason(error: Exception | None) -> str | None:
    """Why the native extension did not load (``error``: the import's), or None if it did."""
    if error is None:
        return None
    if isinstance(error, ModuleNotFoundError):
        return ("the native extension one_fast._native was not built (pip builds in an isolated "
                f"environment without torch unless given --no-build-isolation); build it with "
                f"{_NATIVE_BUILD}")
    return (f"the native extension does not load ({error}); rebuild it with {_NATIVE_BUILD}")


_NATIVE_LOAD_REASON = _native_load_reason(native.LOAD_ERROR)  # the import was tried once


def _native_missing(device: torch.device) -> str | None:
    if _NATIVE_LOAD_REASON is not None:
        return _NATIVE_LOAD_REASON
    if not (native.HAS_CUDA if device.type == "cuda" else native.HAS_CPU):
        return (f"the native extension was built without its {device.type.upper()} kernel (a CUDA "
                f"kernel needs nvcc matching torch's CUDA at build time); rebuild it with "
                f"{_NATIVE_BUILD}")
    return None


def _reference_missing(device: torch.device) -> None:
    return None


# In the order "auto" tries them (see the module docstring).
BACKENDS: dict[str, Backend] = {backend.name: backend for backend in (
    Backend(name="triton",
            row_terms=triton_kernel.row_terms if TRITON_INSTALLED else None,
            fused_op=triton_kernel.op if TRITON_INSTALLED else None,
            device_types=("cuda", "cpu"), dtypes=_FUSED_DTYPES, missing=_triton_missing,
            max_temperature=FUSED_MAX_TEMPERATURE,
            auto_device_types=("cuda",)),  # the interpreter runs on the CPU, far too slowly
    Backend(name="native",
            row_terms=native.row_terms if native.BUILT else None, fused_op=native.op,
            device_types=("cpu", "cuda"), dtypes=_FUSED_DTYPES, missing=_native_missing,
            max_branches=native.MAX_BRANCHES, max_temperature=FUSED_MAX_TEMPERATURE),
    Backend(name="reference", row_terms=reference.row_terms, fused_op=reference_fused.op,
            device_types=None, dtypes=None, missing=_reference_missing),
)}


def check_backend_name(backend: str) -> None:
    """Raise ``ValueError`` unless ``backend`` is "auto" or the name of a backend."""
    if backend != "auto" and backend not in BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {sorted(BACKENDS)}, got {backend!r}")


def unavailable_reason(backend: str, device: torch.device | str) -> str | None:
    """Why backend ``backend`` cannot run on ``device`` in this installation, or None if it can.

    The reason is one line that names the backend and says how to get it where that is possible
    (e.g. the command that builds the native extension); usable verbatim in a message.
    """
    check_backend_name(backend)
    return BACKENDS[backend].unavailable_reason(device)


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Names of the loss backends that can run on ``device``; the first is what "auto" picks.

    Backends "auto" may pick come first, in its order; then the others that can run there.
    """
    device = torch.device(device)
    runnable = [b for b in BACKENDS.values() if b.unavailable_reason(device) is None]
    auto = [b.name for b in runnable if b.auto_may_pick(device)]
    return auto + [b.name for b in runnable if b.name not in auto]


def _names(keep: Callable[[Backend], bool]) -> str:
    return ", ".join(repr(b.name) for b in BACKENDS.values() if keep(b))


def refusal(backend: Backend, device: torch.device, num_branches: int, temperature: float,
            dtypes: tuple[torch.dtype, ...]) -> str | None:
    """None if ``backend`` computes the loss of such inputs on ``device``, else the error."""
    reason = backend.unavailable_reason(device)
    if reason is not None:
        return f"backend {backend.name!r} cannot run on device {device}: {reason}"
    if backend.max_branches is not None and num_branches > backend.max_branches:
        return (f"backend {backend.name!r} takes at most {backend.max_branches} branches, got "
                f"logits with m = {num_branches}; use backend='auto' or one of "
                f"{_names(lambda b: b.max_branches is None)}")
    if backend.max_temperature is not None and temperature > backend.max_temperature:
        return (f"backend {backend.name!r} is not accurate in float32 at temperature "
                f"{temperature:g} > {backend.max_temperature:g} (its one-pass KL cancels); use "
                f"backend='auto' or one of {_names(lambda b: b.max_temperature is None)}, which "
                "compute it cancellation-free")
    for dtype in dtypes:
        if backend.dtypes is not None and dtype not in backend.dtypes:
            return (f"backend {backend.name!r} takes logits and gate of dtypes "
                    f"{', '.join(str(d) for d in backend.dtypes)}, got {dtype}; use "
                    f"backend='auto' or one of {_names(lambda b: b.dtypes is None)}")
    return None


def resolve_backend(backend: str, device: torch.device | str, num_branches: int = 1,
                    temperature: float = 1.0, dtypes: tuple[torch.dtype, ...] = ()) -> Backend:
    """The backend that computes the loss of ``num_branches`` branches at ``temperature``.

    Args:
        backend: "auto" or a name in :data:`BACKENDS`.
        device: where the inputs are.
        num_branches, temperature: the loss's m and T.
        dtypes: the dtypes of the logits and the gate.

    Returns:
        The backend's record: for "auto" the first of :data:`BACKENDS` that "auto" may pick on
        ``device`` and that takes the inputs (the reference takes any).

    Raises:
        ValueError: an unknown name, or a named backend that cannot take the inputs (the message
            says why and what to use instead).
    """
    device = torch.device(device)
    if backend == "auto":  # the reference takes any inputs: the list is never empty
        return [b for b in BACKENDS.values() if b.auto_may_pick(device)
                and refusal(b, device, num_branches, temperature, dtypes) is None][0]
    check_backend_name(backend)
    why_not = refusal(BACKENDS[backend], device, num_branches, temperature, dtypes)
    if why_not is not None:
        raise ValueError(why_not)
    return BACKENDS[backend]
