"""The operator contract shared by the fused backends (Triton, native CUDA C++/CPU).

A fused backend computes, in one pass over the logits, the per-row loss terms *and* the per-row
gradients d loss_n / d logits[n] and d loss_n / d gate[n]. Backward then only scales those by the
incoming per-row gradient, so any reduction ("mean", "sum", "none") built on the per-row loss in
PyTorch backpropagates exactly.

Every fused operator has the schema :data:`FUSED_SCHEMA`::

    (logits (N,m,C), gate (N,m), target (N,) int64, kl_weight (1,) float64,
     temperature, detach_teacher, ignore_index, compute_grad)
    -> loss (N,), ce_branch (N,m), ce_ensemble (N,), kl (N,m),
       grad_logits (N,m,C) in logits' dtype, grad_gate (N,m) in the accumulation dtype

The four term tensors and grad_gate are in the accumulation dtype: float32 (float64 for float64
logits); ignored rows hold 0. When
``compute_grad`` is false the two gradient outputs are empty (shape (0,)).
This module registers the fake (shape) implementation and the autograd formula for such an
operator and turns it into the ``row_terms`` function the loss dispatcher calls.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .reference import compute_dtype
from .terms import RowTerms

FUSED_SCHEMA = (
    "(Tensor logits, Tensor gate, Tensor target, Tensor kl_weight, float temperature, "
    "bool detach_teacher, int ignore_index, bool compute_grad) "
    "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)"
)


def _fake(logits, gate, target, kl_weight, temperature, detach_teacher, ignore_index,
          compute_grad):
    n, m, _ = logits.shape
    acc = compute_dtype(logits.dtype)
    grad_logits = logits.new_empty(logits.shape if compute_grad else (0,))
    grad_gate = gate.new_empty(gate.shape if compute_grad else (0,), dtype=acc)
    return (logits.new_empty((n,), dtype=acc), logits.new_empty((n, m), dtype=acc),
            logits.new_empty((n,), dtype=acc), logits.new_empty((n, m), dtype=acc),
            grad_logits, grad_gate)


def _setup_context(ctx, inputs, output):
    # Only the loss output is differentiated: the others' gradients stay None instead of zero
    # tensors as large as them (autograd would allocate an N x m x C one for grad_logits).
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(output[4], output[5])
    ctx.gate_dtype = inputs[1].dtype


def _backward(ctx, grad_loss, *unused_term_grads):
    # d total / d logits[n] = (d total / d loss_n) * (d loss_n / d logits[n]), computed in
    # float32 (float64 for float64 gradients, so a float64 gradcheck stays exact).
    if grad_loss is None:  # the loss itself was not used: nothing flows back
        return (None,) * 8
    grad_logits, grad_gate = ctx.saved_tensors
    if grad_logits.dim() != 3:  # the (0,) placeholder: N = 0 still gives (0, m, C)
        raise RuntimeError("fused ONE loss: backward called but the forward computed no "
                           "gradients (were logits/gate requiring grad when it ran?)")
    # The gate's gradient arrives in the accumulation dtype (it is tiny), so it is rounded to
    # the gate's dtype once, after scaling; the logits' one was stored in their own dtype.
    acc_l = compute_dtype(grad_logits.dtype)
    d_logits = grad_logits.to(acc_l) * grad_loss.to(acc_l)[:, None, None]
    d_gate = grad_gate * grad_loss.to(grad_gate.dtype)[:, None]
    return (d_logits.to(grad_logits.dtype), d_gate.to(ctx.gate_dtype),
            None, None, None, None, None, None)


def fake_outputs(logits: torch.Tensor, gate: torch.Tensor, compute_grad: bool
                 ) -> tuple[torch.Tensor, ...]:
    """Empty tensors with the shapes and dtypes of a fused operator's six outputs (the
    operator's fake implementation; a traceable implementation must allocate the same)."""
    return _fake(logits, gate, None, None, None, None, None, compute_grad)


def attach_autograd(qualname: str) -> None:
    """Register the backward of an operator with :data:`FUSED_SCHEMA`."""
    torch.library.register_autograd(qualname, _backward, setup_context=_setup_context)


def attach_fake_and_autograd(qualname: str) -> None:
    """Register shape inference and the backward for an operator with :data:`FUSED_SCHEMA`."""
    torch.library.register_fake(qualname)(_fake)
    attach_autograd(qualname)


def define_python_op(qualname: str, impl: Callable, device_types=None):
    """Define ``qualname`` (e.g. "one_fast::triton_one_loss") from a Python implementation,
    opaque to ``torch.compile`` (it sees the fake implementation only)."""
    op = torch.library.custom_op(qualname, impl, mutates_args=(), device_types=device_types,
                                 schema=FUSED_SCHEMA)
    attach_fake_and_autograd(qualname)
    return op


def define_triton_op(qualname: str, impl: Callable):
    """Define ``qualname`` from ``impl``, a function of torch operators and Triton kernels
    launched through ``torch.library.wrap_triton``, with :func:`torch.library.triton_op`.

    Unlike :func:`define_python_op`, ``torch.compile`` traces into ``impl``: Inductor sees the
    kernel launch itself (and AOTInductor can compile it in). ``impl`` is also the fake
    implementation (run on fake tensors, where the wrapped launch does nothing), so it must
    allocate exactly what :func:`fake_outputs` does; its type annotations give the schema,
    which must have :data:`FUSED_SCHEMA`'s types (torch infers ``int`` as ``SymInt``). The
    backward is the shared one.
    """
    op = torch.library.triton_op(qualname, impl, mutates_args=())
    attach_autograd(qualname)
    return op


def kl_weight_tensor(kl_weight: float | torch.Tensor, device: torch.device,
                     refusal: str) -> torch.Tensor:
    """``kl_weight`` as the (1,) float64 device tensor the fused kernels read (no host sync).

    The kernels take it as a constant: a tensor that requires grad (with grad enabled) is
    refused with ``refusal`` rather than silently detached.
    """
    if isinstance(kl_weight, torch.Tensor):
        if kl_weight.requires_grad and torch.is_grad_enabled():
            raise ValueError(refusal)
        return kl_weight.detach().reshape(1).to(device=device, dtype=torch.float64)
    return torch.full((1,), float(kl_weight), dtype=torch.float64, device=device)


def row_terms_from_op(op: Callable) -> Callable[..., RowTerms]:
    """Build a backend's ``row_terms`` function around a fused operator."""

    def row_terms(logits, gate, target, temperature, kl_weight, detach_teacher, ignore_index):
        compute_grad = torch.is_grad_enabled() and (logits.requires_grad or gate.requires_grad)
        kl_w = kl_weight_tensor(
            kl_weight, logits.device,
            "kl_weight: a tensor that requires grad is differentiated only by "
            "backend='reference'; the fused kernels take it as a constant "
            "(pass kl_weight.detach())")
        loss, ce_branch, ce_ensemble, kl, _, _ = op(
            logits, gate, target.long(), kl_w, float(temperature), bool(detach_teacher),
            int(ignore_index), compute_grad)
        return RowTerms(loss, ce_branch, ce_ensemble, kl, target != ignore_index)

    return row_terms
