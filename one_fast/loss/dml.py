"""Deep Mutual Learning between m peers: ``dml_loss`` and the ``DMLLoss`` module.

One backend today, the plain-PyTorch reference (:mod:`one_fast.loss.dml_reference`). A fused
kernel would do the same row-wise softmax work as ONE's (the all-pairs KL needs only each peer's
normalisers and the m x m expectations E_{q_j}[z_j - z_i]); it is not written yet.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from . import dml_reference
from .terms import reduce_rows
from .validation import check_floating, check_options, check_target, check_target_values, describe


class DMLLossTerms(NamedTuple):
    """The DML loss and its parts, reduced like the loss ("mean", "sum" or per row for "none").

    ``loss = ce_branches + kl_weight * T**2 * kl``. Only ``loss`` is differentiable; the parts
    are detached values for logging.

    Attributes:
        loss: the training loss (what ``dml_loss`` returns).
        ce_branches: sum over peers of CE(z_i, y).
        kl: sum over peers i of 1/(m-1) sum_{j != i} KL(q_j || q_i), before weighting (0 for
            m = 1 or ``kl_weight`` the number 0: not computed).
        ce_per_branch: CE(z_i, y) per peer, shape (m,) (or (N, m) for "none").
        kl_per_branch: peer i's mean KL from the others, shape (m,) (or (N, m) for "none").
    """

    loss: torch.Tensor
    ce_branches: torch.Tensor
    kl: torch.Tensor
    ce_per_branch: torch.Tensor
    kl_per_branch: torch.Tensor


def validate_dml_loss_args(logits, target, temperature, kl_weight, ignore_index,
                           reduction) -> None:
    """Raise ``ValueError``/``TypeError`` naming the offending argument.

    Shapes: ``logits`` (N, m, C) floating with m >= 1 and C >= 1, ``target`` (N,) integer.
    Target values are checked in eager mode only (the check reads the tensor on the host).
    """
    check_floating(logits, "logits", "(N, m, C)")
    n, m, c = logits.shape
    if m < 1:
        raise ValueError(f"logits must have at least one peer (dim 1), got {describe(logits)}")
    if c < 1:
        raise ValueError(f"logits must have at least one class (dim 2), got {describe(logits)}")
    check_target(target, n, "logits")
    if target.device != logits.device:
        raise ValueError(f"logits and target must be on one device, got {logits.device} and "
                         f"{target.device}")
    check_options(temperature, "kl_weight", kl_weight, ignore_index, reduction)
    check_target_values(target, c, ignore_index)


def dml_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    temperature: float = 1.0,
    kl_weight: float | torch.Tensor = 1.0,
    ignore_index: int = -100,
    reduction: str = "mean",
    return_terms: bool = False,
) -> torch.Tensor | DMLLossTerms:
    """Deep Mutual Learning (Zhang et al. 2018) of m peers trained together.

    For each row n whose target is not ``ignore_index``, with q_i = softmax(z_i / T)::

        L_n = sum_i [ CE(z_i, y) + kl_weight * T^2 * 1/(m-1) * sum_{j != i} KL(q_j || q_i) ]

    In peer i's term every z_j (j != i) is a constant: each peer learns from the others, never
    pushes them. m = 1 gives the plain cross-entropy; with ``kl_weight`` the Python number 0 the
    KL terms are not computed.

    Args:
        logits: (N, m, C) peer logits, float32/bfloat16/float16 (float64 for gradchecks).
        target: (N,) integer labels in [0, C), or ``ignore_index``.
        temperature: T > 0 of the softened distributions in the KL terms.
        kl_weight: weight of the KL terms; a Python number or a 1-element tensor (which a
            compiled step can refill without recompiling; a tensor is never skipped as zero).
        ignore_index: rows with this target contribute 0 and are not counted by "mean".
        reduction: "mean" (over non-ignored rows; 0 rows give 0), "sum", or "none" (per row).
        return_terms: also return the loss parts for logging, computed in the same pass.

    Returns:
        The float32 loss (float64 for float64 input), or a :class:`DMLLossTerms` if
        ``return_terms``.
    """
    validate_dml_loss_args(logits, target, temperature, kl_weight, ignore_index, reduction)
    rows = dml_reference.row_terms(logits, target, float(temperature), kl_weight, ignore_index)
    ce_b = reduce_rows(rows.ce, rows.valid, reduction)
    kl_b = reduce_rows(rows.kl, rows.valid, reduction)
    terms = DMLLossTerms(
        loss=reduce_rows(rows.loss, rows.valid, reduction),
        ce_branches=ce_b.sum(-1),
        kl=kl_b.sum(-1),
        ce_per_branch=ce_b,
        kl_per_branch=kl_b,
    )
    return terms if return_terms else terms.loss


class DMLLoss(nn.Module):
    """Module form of :func:`dml_loss`.

    Example::

        criterion = DMLLoss(temperature=1.0)
        logits, _ = model(images)            # (N, m, C): m independent peers, batched
        loss = criterion(logits, labels)
        loss.backward()
    """

    def __init__(self, temperature: float = 1.0, ignore_index: int = -100,
                 reduction: str = "mean") -> None:
        super().__init__()
        self.temperature = temperature
        self.ignore_index = ignore_index
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, target: torch.Tensor,
                kl_weight: float | torch.Tensor = 1.0, return_terms: bool = False
                ) -> torch.Tensor | DMLLossTerms:
        """Return ``dml_loss`` of the inputs with this module's settings."""
        return dml_loss(logits, target, temperature=self.temperature, kl_weight=kl_weight,
                        ignore_index=self.ignore_index, reduction=self.reduction,
                        return_terms=return_terms)

    def extra_repr(self) -> str:
        return (f"temperature={self.temperature}, ignore_index={self.ignore_index}, "
                f"reduction={self.reduction!r}")


__all__ = ["DMLLoss", "DMLLossTerms", "dml_loss"]
