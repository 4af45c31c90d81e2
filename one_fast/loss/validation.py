"""Argument checks shared by every loss and backend, so all of them fail the same way."""

from __future__ import annotations

import math
import numbers

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


def _is_number(x: object) -> bool:
    """A real number that is not a tensor or a bool (NumPy scalars count)."""
    return isinstance(x, numbers.Real) and not isinstance(x, (bool, torch.Tensor))


def check_options(temperature: float, weight_name: str, weight: float | torch.Tensor,
                  ignore_index: int, reduction: str) -> None:
    """The settings every distillation loss takes, each error naming its argument.

    ``weight`` (called ``weight_name``) may be a finite, non-negative number or a 1-element
    tensor. A tensor's value is checked when it lives on the CPU; on CUDA reading it would
    synchronise with the device every call, so there a finite, non-negative value is the
    caller's contract (a NaN shows up as a non-finite loss). Also used at construction.

    Raises:
        TypeError, ValueError: naming the argument.
    """
    if not _is_number(temperature):
        raise TypeError(f"temperature must be a Python number (or NumPy scalar), got "
                        f"{type(temperature).__name__}")
    if not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be finite and > 0, got {temperature}")
    if isinstance(weight, torch.Tensor):
        if weight.numel() != 1:
            raise ValueError(f"{weight_name} must be a number or a 1-element tensor, got shape "
                             f"{tuple(weight.shape)}")
        if weight.device.type == "cpu" and not _is_tracing():
            value = float(weight)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{weight_name} must be finite and >= 0, got tensor({value})")
    elif not _is_number(weight) or not math.isfinite(weight) or weight < 0:
        raise ValueError(f"{weight_name} must be finite and >= 0, got {weight!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
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


def gate_tolerance(num_branches: int) -> float:
    """How far a gate row's sum may be from 1: m x 2^-6, twice the worst rounding of m bfloat16
    softmax outputs, so a gate computed under bf16 autocast (then stored in any dtype) passes."""
    return num_branches * 2.0**-6


def validate_gate_values(gate: torch.Tensor) -> None:
    """Check the gate's values: every finite row non-negative and summing to 1 (within rounding).

    A row holding NaN or inf is let through, like non-finite logits: it comes from a diverged
    network, gives a NaN loss, and a trainer must see it as that (the step's non-finite-loss
    check stops training and keeps the last checkpoint), not as a bad argument.

    Runs only where it costs no host synchronisation: CPU tensors, outside torch.compile
    tracing. On CUDA a valid gate (e.g. a softmax, as ``ONEResNet`` returns) is the caller's
    contract: checking it would stall the device every call.

    Args:
        gate: (N, m) floating tensor (shape checked by :func:`validate_one_loss_args`).

    Raises:
        ValueError: naming the first offending row.
    """
    if gate.device.type != "cpu" or gate.numel() == 0 or _is_tracing():
        return
    g = gate.detach().to(torch.float64)
    tol = gate_tolerance(gate.shape[1])
    bad = torch.isfinite(g).all(1) & ((g < 0).any(1) | ((g.sum(1) - 1).abs() > tol))
    if bool(bad.any()):
        row = int(bad.nonzero()[0])
        raise ValueError(
            f"gate rows must be non-negative and sum to 1 (within {tol:.2g}); row {row} "
            f"is {g[row].tolist()} (sum {float(g[row].sum()):.6g}): pass softmax weights")


def describe(x: object) -> str:
    """A short description of a bad argument for error messages: its shape or its type."""
    if isinstance(x, torch.Tensor):
        return f"shape {tuple(x.shape)}"
    return f"{type(x).__name__}"
