"""Argument checks shared by every loss and backend, so all of them fail the same way."""

from __future__ import annotations

import math

import torch

REDUCTIONS = ("mean", "sum", "none")


def _is_tracing() -> bool:
    """True while torch.compile traces or a CUDA graph captures: value checks would sync."""
    if torch.compiler.is_compiling():
        return True
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def validate_one_loss_args(
    logits: torch.Tensor,
    gate: torch.Tensor,
    target: torch.Tensor,
    temperature: float,
    kl_weight: float | torch.Tensor,
    ignore_index: int,
    reduction: str,
) -> None:
    """Raise ``ValueError``/``TypeError`` naming the offending argument.

    Shapes: ``logits`` (N, m, C) floating, ``gate`` (N, m) floating, ``target`` (N,) integer.
    Target values are checked against [0, C) (or ``ignore_index``) in eager mode only (see
    :func:`check_target_values`): a compiled or CUDA-graph-captured step skips the check.
    """
    check_floating(logits, "logits", "(N, m, C)")
    n, m, c = logits.shape
    if m < 1:
        raise ValueError(f"logits must have at least one branch (dim 1), got {describe(logits)}")
    if c < 1:
        raise ValueError(f"logits must have at least one class (dim 2), got {describe(logits)}")
    if not isinstance(gate, torch.Tensor) or gate.dim() != 2:
        raise ValueError(f"gate must be a 2-D tensor (N, m), got {describe(gate)}")
    if not gate.is_floating_point():
        raise TypeError(f"gate must be floating point, got dtype {gate.dtype}")
    if tuple(gate.shape) != (n, m):
        raise ValueError(
            f"gate must have shape (N, m) = {(n, m)} to match logits, got {tuple(gate.shape)}"
        )
    check_target(target, n, "logits")
    if gate.device != logits.device or target.device != logits.device:
        raise ValueError(
            f"logits, gate and target must be on one device, got {logits.device}, "
            f"{gate.device} and {target.device}"
        )
    check_options(temperature, "kl_weight", kl_weight, ignore_index, reduction)
    check_target_values(target, c, ignore_index)


def check_floating(x: torch.Tensor, name: str, layout: str) -> None:
    """``x`` (called ``name``) must be a floating tensor with one dimension per ``layout`` entry.

    ``layout`` spells the expected shape, e.g. ``"(N, m, C)"``; its comma count gives the rank.
    """
    dims = layout.count(",") + 1
    if not isinstance(x, torch.Tensor) or x.dim() != dims:
        raise ValueError(f"{name} must be a {dims}-D tensor {layout}, got {describe(x)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be floating point, got dtype {x.dtype}")


def check_target(target: torch.Tensor, n: int, source: str) -> None:
    """``target`` must be a 1-D integer tensor of ``n`` entries (N taken from ``source``)."""
    if not isinstance(target, torch.Tensor) or target.dim() != 1:
        raise ValueError(f"target must be a 1-D tensor (N,), got {describe(target)}")
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TypeError(f"target must hold integer class indices, got dtype {target.dtype}")
    if target.shape[0] != n:
        raise ValueError(f"target must have N = {n} entries to match {source}, "
                         f"got {target.shape[0]}")


def check_options(temperature: float, weight_name: str, weight: float | torch.Tensor,
                  ignore_index: int, reduction: str) -> None:
    """The scalar options every distillation loss takes, each error naming its argument.

    ``weight`` (called ``weight_name``) may be a finite Python number or a 1-element tensor.
    """
    if isinstance(temperature, torch.Tensor) or not isinstance(temperature, (int, float)):
        raise TypeError(f"temperature must be a Python number, got {type(temperature).__name__}")
    if not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be finite and > 0, got {temperature}")
    if isinstance(weight, torch.Tensor):
        if weight.numel() != 1:
            raise ValueError(f"{weight_name} must be a number or a 1-element tensor, got shape "
                             f"{tuple(weight.shape)}")
    elif not isinstance(weight, (int, float)) or not math.isfinite(weight):
        raise ValueError(f"{weight_name} must be a finite number, got {weight!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if not isinstance(ignore_index, int):
        raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")


def check_target_values(target: torch.Tensor, num_classes: int, ignore_index: int) -> None:
    """Check that every target is in [0, num_classes) or equals ``ignore_index``.

    Skipped while tracing (a compiled or CUDA-graph-captured step). On the CPU a bad value raises
    ``ValueError`` naming it. On any other device the check is a device-side assertion
    (``torch._assert_async``, as PyTorch's own losses check their targets): no value is read back
    to the host, so an eager step does not wait for the device; a bad value fails the next
    synchronising call with a device-side assertion error.

    Args:
        target: (N,) integer class indices.
        num_classes: C, the number of classes.
        ignore_index: the target value that marks a row to skip.
    """
    if not target.numel() or _is_tracing():
        return
    bad = (target != ignore_index) & ((target < 0) | (target >= num_classes))
    message = f"target values must be in [0, {num_classes}) or equal ignore_index={ignore_index}"
    if target.device.type != "cpu":
        torch._assert_async(~bad.any(), message)
        return
    if bool(bad.any()):
        raise ValueError(f"{message}; found {int(target[bad][0])}")


def describe(x: object) -> str:
    """A short description of a bad argument for error messages: its shape or its type."""
    if isinstance(x, torch.Tensor):
        return f"shape {tuple(x.shape)}"
    return f"{type(x).__name__}"
