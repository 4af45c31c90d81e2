"""Hinton knowledge distillation from a frozen teacher: ``kd_loss`` and the ``KDLoss`` module.

One backend today, the plain-PyTorch reference (:mod:`one_fast.loss.kd_reference`): a student
is one branch, so the loss is two row-wise softmaxes over (N, C), small next to the network.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from . import kd_reference
from .terms import reduce_rows
from .validation import check_floating, check_options, check_target, check_target_values, describe


class KDLossTerms(NamedTuple):
    """The KD loss and its parts, reduced like the loss ("mean", "sum" or per row for "none").

    ``loss = ce + kd_weight * T**2 * kl``. Only ``loss`` is differentiable; the parts are
    detached values for logging.

    Attributes:
        loss: the training loss (what ``kd_loss`` returns).
        ce: CE(z_s, y) of the student.
        kl: KL(softmax(z_t/T) || softmax(z_s/T)), before weighting (0 when ``kd_weight`` is the
            number 0: not computed).
    """

    loss: torch.Tensor
    ce: torch.Tensor
    kl: torch.Tensor


def validate_kd_loss_args(logits, teacher_logits, target, temperature, kd_weight, ignore_index,
                          reduction) -> None:
    """Raise ``ValueError``/``TypeError`` naming the offending argument.

    Shapes: ``logits`` and ``teacher_logits`` (N, C) floating, ``target`` (N,) integer. Target
    values are checked in eager mode only (the check reads the tensor on the host).
    """
    check_floating(logits, "logits", "(N, C)")
    n, c = logits.shape
    if c < 1:
        raise ValueError(f"logits must have at least one class (dim 1), got {describe(logits)}")
    check_floating(teacher_logits, "teacher_logits", "(N, C)")
    if teacher_logits.shape != logits.shape:
        raise ValueError(f"teacher_logits must have the shape of logits {tuple(logits.shape)}, "
                         f"got {tuple(teacher_logits.shape)}")
    check_target(target, n, "logits")
    if teacher_logits.device != logits.device or target.device != logits.device:
        raise ValueError(f"logits, teacher_logits and target must be on one device, got "
                         f"{logits.device}, {teacher_logits.device} and {target.device}")
    check_options(temperature, "kd_weight", kd_weight, ignore_index, reduction)
    check_target_values(target, c, ignore_index)


def kd_loss(
    logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor,
    *,
    temperature: float = 4.0,
    kd_weight: float | torch.Tensor = 1.0,
    ignore_index: int = -100,
    reduction: str = "mean",
    return_terms: bool = False,
) -> torch.Tensor | KDLossTerms:
    """Knowledge distillation (Hinton et al. 2015) from a frozen teacher's logits.

    For each row n whose target is not ``ignore_index``::

        L_n = CE(z_s, y) + kd_weight * T^2 * KL(softmax(z_t/T) || softmax(z_s/T))

    No gradient ever reaches ``teacher_logits`` (they are detached here, whatever the caller
    did). With ``kd_weight`` the Python number 0 the KL term is not computed.

    Args:
        logits: (N, C) student logits, float32/bfloat16/float16 (float64 for gradchecks).
        teacher_logits: (N, C) teacher logits, any floating dtype.
        target: (N,) integer labels in [0, C), or ``ignore_index``.
        temperature: T > 0 of the softened distributions in the KL term.
        kd_weight: weight of the KL term; a Python number or a 1-element tensor (which a compiled
            step can refill without recompiling; a tensor is never skipped as zero).
        ignore_index: rows with this target contribute 0 and are not counted by "mean".
        reduction: "mean" (over non-ignored rows; 0 rows give 0), "sum", or "none" (per row).
        return_terms: also return the loss parts for logging, computed in the same pass.

    Returns:
        The float32 loss (float64 for float64 input), or a :class:`KDLossTerms` if
        ``return_terms``.
    """
    validate_kd_loss_args(logits, teacher_logits, target, temperature, kd_weight, ignore_index,
                          reduction)
    rows = kd_reference.row_terms(logits, teacher_logits, target, float(temperature), kd_weight,
                                  ignore_index)
    terms = KDLossTerms(
        loss=reduce_rows(rows.loss, rows.valid, reduction),
        ce=reduce_rows(rows.ce, rows.valid, reduction),
        kl=reduce_rows(rows.kl, rows.valid, reduction),
    )
    return terms if return_terms else terms.loss


class KDLoss(nn.Module):
    """Module form of :func:`kd_loss`.

    Example::

        criterion = KDLoss(temperature=4.0)
        with torch.no_grad():
            teacher_logits = teacher(images)
        loss = criterion(student(images), teacher_logits, labels)
        loss.backward()
    """

    def __init__(self, temperature: float = 4.0, ignore_index: int = -100,
                 reduction: str = "mean") -> None:
        super().__init__()
        self.temperature = temperature
        self.ignore_index = ignore_index
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
                kd_weight: float | torch.Tensor = 1.0, return_terms: bool = False
                ) -> torch.Tensor | KDLossTerms:
        """Return ``kd_loss`` of the inputs with this module's settings."""
        return kd_loss(logits, teacher_logits, target, temperature=self.temperature,
                       kd_weight=kd_weight, ignore_index=self.ignore_index,
                       reduction=self.reduction, return_terms=return_terms)

    def extra_repr(self) -> str:
        return (f"temperature={self.temperature}, ignore_index={self.ignore_index}, "
                f"reduction={self.reduction!r}")


__all__ = ["KDLoss", "KDLossTerms", "kd_loss"]
