"""The native (C++/CUDA) fused ONE loss: loader of the ``one_fast._native`` extension.

The extension (sources in ``kernels/``, built by ``setup.py`` or ``CMakeLists.txt``) defines the
operator ``one_fast_native::one_loss`` with the fused-op schema (:mod:`one_fast.loss.fused_op`):
one pass for the per-row terms and the per-row gradients, a CPU implementation always, a CUDA
one when built with nvcc against a CUDA torch. This module attaches the shared fake (shape)
implementation and autograd formula, and exposes :func:`row_terms` for the loss dispatcher.

Without the extension (no compiler at install time, or torch not importable while building) the
module still imports: :data:`BUILT` is False and :data:`LOAD_ERROR` says why; the backend registry
(:mod:`one_fast.loss.backends`) turns that into the message that says how to build it.

Limits: at most :data:`MAX_BRANCHES` branches (per-branch state lives in registers); the
registry refuses wider inputs for ``backend="native"`` and "auto" picks another backend.
"auto" prefers this backend to the reference on the CPU because it is faster there (timings in
BENCHMARKS.md).
"""

from __future__ import annotations

import contextlib
import importlib

import torch

from .fused_op import attach_fake_and_autograd, row_terms_from_op
from .terms import RowTerms

QUALNAME = "one_fast_native::one_loss"
# Most branches the kernels hold per row (ONE_FAST_MAX_BRANCHES in kernels/one_loss_api.h).
MAX_BRANCHES = 8
# Test hooks, read at each call. BLOCK_C_OVERRIDE: classes per online-softmax step of the CPU
# implementation (None: its default, 512), so that the multi-chunk path and the merge of partial
# states run on small C. POISON_OUTPUTS: the operator NaN-fills its outputs (allocated in C++,
# not through torch.empty) before the kernels run, so that a test sees any element not written.
BLOCK_C_OVERRIDE: int | None = None
POISON_OUTPUTS: bool = False

LOAD_ERROR: Exception | None = None
try:
    importlib.import_module("one_fast._native")  # runs the C++ TORCH_LIBRARY registrations
except ImportError as exc:  # not built (or built for another torch): the backend is unavailable
    LOAD_ERROR = exc

BUILT = LOAD_ERROR is None
HAS_CPU = BUILT and torch._C._dispatch_has_kernel_for_dispatch_key(QUALNAME, "CPU")
HAS_CUDA = BUILT and torch._C._dispatch_has_kernel_for_dispatch_key(QUALNAME, "CUDA")

if BUILT:
    attach_fake_and_autograd(QUALNAME)
    op = torch.ops.one_fast_native.one_loss
    _op_row_terms = row_terms_from_op(op)
else:
    op = None
    _op_row_terms = None


def row_terms(logits, gate, target, temperature, kl_weight, detach_teacher,
              ignore_index) -> RowTerms:
    """Per-row ONE loss terms from the native operator (see :mod:`one_fast.loss.fused_op`)."""
    if _op_row_terms is None:
        raise RuntimeError(f"the native ONE loss extension is not built: {LOAD_ERROR}")
    args = (logits, gate, target, temperature, kl_weight, detach_teacher, ignore_index)
    if BLOCK_C_OVERRIDE is None and not POISON_OUTPUTS:
        return _op_row_terms(*args)
    with _test_hooks():
        return _op_row_terms(*args)


@contextlib.contextmanager
def _test_hooks():
    """Apply BLOCK_C_OVERRIDE / POISON_OUTPUTS to the extension for one call."""
    ops = torch.ops.one_fast_native
    chunk = ops._cpu_chunk(int(BLOCK_C_OVERRIDE)) if BLOCK_C_OVERRIDE is not None else None
    poison = ops._poison_outputs(True) if POISON_OUTPUTS else None
    try:
        yield
    finally:
        if chunk is not None:
            ops._cpu_chunk(chunk)
        if poison is not None:
            ops._poison_outputs(poison)
