"""Argument checks shared by every ONE-loss backend, so all of them fail the same way."""

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
    Target values are checked against [0, C) (or ``ignore_index``) in eager mode only: the check
    reads the tensor on the host, which a compiled or CUDA-graph-captured step must not do.
    """
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3:
        raise ValueError(f"logits must be a 3-D tensor (N, m, C), got {_describe(logits)}")
    if not logits.is_floating_point():
        raise TypeError(f"logits must be floating point, got dtype {logits.dtype}")
    n, m, c = logits.shape
    if m < 1:
        raise ValueError(f"logits must have at least one branch (dim 1), got {_describe(logits)}")
    if c < 1:
        raise ValueError(f"logits must have at least one class (dim 2), got {_describe(logits)}")
    if not isinstance(gate, torch.Tensor) or gate.dim() != 2:
        raise ValueError(f"gate must be a 2-D tensor (N, m), got {_describe(gate)}")
    if not gate.is_floating_point():
        raise TypeError(f"gate must be floating point, got dtype {gate.dtype}")
    if tuple(gate.shape) != (n, m):
        raise ValueError(
            f"gate must have shape (N, m) = {(n, m)} to match logits, got {tuple(gate.shape)}"
        )
    if not isinstance(target, torch.Tensor) or target.dim() != 1:
        raise ValueError(f"target must be a 1-D tensor (N,), got {_describe(target)}")
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TypeError(f"target must hold integer class indices, got dtype {target.dtype}")
    if target.shape[0] != n:
        raise ValueError(f"target must have N = {n} entries to match logits, got {target.shape[0]}")
    if gate.device != logits.device or target.device != logits.device:
        raise ValueError(
            f"logits, gate and target must be on one device, got {logits.device}, "
            f"{gate.device} and {target.device}"
        )
    validate_options(temperature, kl_weight, reduction, ignore_index)
    if n and not _is_tracing():
        bad = (target != ignore_index) & ((target < 0) | (target >= c))
        if bool(bad.any()):
            first = int(target[bad][0])
            raise ValueError(
                f"target values must be in [0, {c}) or equal ignore_index={ignore_index}; "
                f"found {first}"
            )


def _is_number(x: object) -> bool:
    """A real number that is not a tensor or a bool (NumPy scalars count)."""
    return isinstance(x, numbers.Real) and not isinstance(x, (bool, torch.Tensor))


def validate_options(
    temperature: float,
    kl_weight: float | torch.Tensor,
    reduction: str,
    ignore_index: int,
) -> None:
    """Check the loss's settings (no tensors but ``kl_weight``); also used at construction.

    A ``kl_weight`` tensor's value is checked (finite, >= 0) when it lives on the CPU; on CUDA
    reading it would synchronise with the device every call, so there a finite, non-negative
    value is the caller's contract (a NaN shows up as a non-finite loss).

    Raises:
        TypeError, ValueError: naming the argument.
    """
    if not _is_number(temperature):
        raise TypeError(f"temperature must be a Python number (or NumPy scalar), got "
                        f"{type(temperature).__name__}")
    if not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be finite and > 0, got {temperature}")
    if isinstance(kl_weight, torch.Tensor):
        if kl_weight.numel() != 1:
            raise ValueError(f"kl_weight must be a number or a 1-element tensor, got shape "
                             f"{tuple(kl_weight.shape)}")
        if kl_weight.device.type == "cpu" and not _is_tracing():
            value = float(kl_weight)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"kl_weight must be finite and >= 0, got tensor({value})")
    elif not _is_number(kl_weight) or not math.isfinite(kl_weight) or kl_weight < 0:
        raise ValueError(f"kl_weight must be finite and >= 0, got {kl_weight!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
        raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")


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


def _describe(x: object) -> str:
    if isinstance(x, torch.Tensor):
        return f"shape {tuple(x.shape)}"
    return f"{type(x).__name__}"
