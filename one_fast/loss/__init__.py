"""The ONE loss: validation, backend dispatch, and the drop-in ``ONELoss`` module.

The backends ("reference", "triton", "native"), where each runs and what "auto" picks are in
:mod:`one_fast.loss.backends`; each returns the same per-row terms
(:class:`~one_fast.loss.terms.RowTerms`).
"""

from __future__ import annotations

import torch
from torch import nn

from .backends import (
    BACKENDS,
    FUSED_MAX_TEMPERATURE,
    Backend,
    available_backends,
    check_backend_name,
    resolve_backend,
    unavailable_reason,
)
from .cl_ilr import CLILRLossTerms, cl_ilr_loss
from .dml import DMLLoss, DMLLossTerms, dml_loss
from .fused_linear import FusedLinearONELoss, fused_linear_one_loss
from .kd import KDLoss, KDLossTerms, kd_loss
from .okddip import OKDDipLossTerms, okddip_loss
from .terms import ONELossTerms, RowTerms, reduce_terms
from .validation import check_options, validate_gate_values, validate_one_loss_args


def one_loss(
    logits: torch.Tensor,
    gate: torch.Tensor,
    target: torch.Tensor,
    *,
    temperature: float = 3.0,
    kl_weight: float | torch.Tensor = 1.0,
    detach_teacher: bool = True,
    ignore_index: int = -100,
    reduction: str = "mean",
    backend: str = "auto",
    return_terms: bool = False,
) -> torch.Tensor | ONELossTerms:
    """The ONE (On-the-fly Native Ensemble) distillation loss.

    For each row n whose target is not ``ignore_index``::

        z_e = sum_i g_i z_i
        L_n = sum_i CE(z_i, y) + CE(z_e, y)
              + kl_weight * T^2 * sum_i KL(softmax(z_e/T) || softmax(z_i/T))

    Args:
        logits: (N, m, C) branch logits, float32/bfloat16/float16 (float64 for gradchecks).
        gate: (N, m) gate weights: finite, non-negative, rows summing to 1 (e.g. ``ONEResNet``'s
            second output, a softmax). Checked on the CPU; on CUDA this is the caller's contract
            (checking would synchronise with the device every call).
        target: (N,) integer labels in [0, C), or ``ignore_index``.
        temperature: T > 0 of the softened distributions in the KL terms (a Python or NumPy
            number).
        kl_weight: weight >= 0 of the KL terms; a number or a 1-element tensor (a tensor lets a
            ramp-up change it without recompiling a compiled step; its value is checked on the
            CPU only, see :func:`~one_fast.loss.validation.check_options`).
        detach_teacher: if True (the ONE authors' code), the KL terms do not backpropagate into
            the teacher z_e (nor the gate); if False they do.
        ignore_index: rows with this target contribute 0 and are not counted by "mean".
        reduction: "mean" (over non-ignored rows; 0 rows give 0), "sum", or "none" (per row).
        backend: "auto" or a name from :func:`available_backends`.
        return_terms: also return the loss parts for logging, computed in the same pass.

    Returns:
        The float32 loss (float64 for float64 input), or an :class:`ONELossTerms` if
        ``return_terms``.
    """
    validate_one_loss_args(logits, gate, target, temperature, kl_weight, ignore_index, reduction)
    validate_gate_values(gate)
    if not isinstance(kl_weight, torch.Tensor):
        kl_weight = float(kl_weight)  # NumPy scalars too
    row_terms = resolve_backend(backend, logits.device, logits.shape[1], float(temperature),
                                (logits.dtype, gate.dtype)).row_terms
    rows = row_terms(logits, gate, target, float(temperature), kl_weight, bool(detach_teacher),
                     int(ignore_index))
    terms = reduce_terms(rows, reduction)
    return terms if return_terms else terms.loss


class ONELoss(nn.Module):
    """Module form of :func:`one_loss`, to drop into any PyTorch training loop.

    The settings are checked here, at construction (``ONELoss(temperature=0)`` raises), with the
    same errors :func:`one_loss` gives.

    Example::

        criterion = ONELoss(temperature=3.0)
        logits, gate = model(images)          # (N, m, C), (N, m)
        loss = criterion(logits, gate, labels, kl_weight=1.0)
        loss.backward()
    """

    def __init__(
        self,
        temperature: float = 3.0,
        detach_teacher: bool = True,
        ignore_index: int = -100,
        reduction: str = "mean",
        backend: str = "auto",
    ) -> None:
        super().__init__()
        check_options(temperature, "kl_weight", 1.0, ignore_index, reduction)
        check_backend_name(backend)
        self.temperature = float(temperature)
        self.detach_teacher = detach_teacher
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.backend = backend

    def forward(
        self,
        logits: torch.Tensor,
        gate: torch.Tensor,
        target: torch.Tensor,
        kl_weight: float | torch.Tensor = 1.0,
        return_terms: bool = False,
    ) -> torch.Tensor | ONELossTerms:
        """Return ``one_loss`` of the inputs with this module's settings."""
        return one_loss(
            logits, gate, target,
            temperature=self.temperature, kl_weight=kl_weight,
            detach_teacher=self.detach_teacher, ignore_index=self.ignore_index,
            reduction=self.reduction, backend=self.backend, return_terms=return_terms,
        )

    def extra_repr(self) -> str:
        return (f"temperature={self.temperature}, detach_teacher={self.detach_teacher}, "
                f"ignore_index={self.ignore_index}, reduction={self.reduction!r}, "
                f"backend={self.backend!r}")


__all__ = ["FUSED_MAX_TEMPERATURE", "ONELoss", "ONELossTerms", "RowTerms", "available_backends",
           "one_loss"]
__all__ += ["BACKENDS", "Backend", "resolve_backend", "unavailable_reason"]
__all__ += ["DMLLoss", "DMLLossTerms", "KDLoss", "KDLossTerms", "dml_loss", "kd_loss"]
__all__ += ["FusedLinearONELoss", "fused_linear_one_loss"]
__all__ += ["CLILRLossTerms", "OKDDipLossTerms", "cl_ilr_loss", "okddip_loss"]
