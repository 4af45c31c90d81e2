"""Per-row loss terms every backend produces, and the one reduction they all share."""

from __future__ import annotations

from typing import NamedTuple

import torch


class RowTerms(NamedTuple):
    """Per-row ONE loss terms, float32; rows whose target is ``ignore_index`` hold 0.

    ``loss`` (N,) is ``ce_branch.sum(1) + ce_ensemble + kl_weight * T**2 * kl.sum(1)``;
    ``ce_branch`` (N, m) is CE(z_i, y); ``ce_ensemble`` (N,) is CE(z_e, y);
    ``kl`` (N, m) is KL(softmax(z_e/T) || softmax(z_i/T)), unweighted. ``valid`` (N,) bool.
    Only ``loss`` carries autograd history; the others are for logging.
    """

    loss: torch.Tensor
    ce_branch: torch.Tensor
    ce_ensemble: torch.Tensor
    kl: torch.Tensor
    valid: torch.Tensor


class ONELossTerms(NamedTuple):
    """The ONE loss and its parts, reduced like the loss ("mean", "sum" or per row for "none").

    ``loss = ce_branches + ce_ensemble + kl_weight * T**2 * kl``. Only ``loss`` is
    differentiable; the parts are detached float32 values for logging.

    Attributes:
        loss: the training loss (what ``one_loss`` returns).
        ce_branches: sum over branches of CE(z_i, y).
        ce_ensemble: CE(z_e, y) of the gated ensemble teacher.
        kl: sum over branches of KL(softmax(z_e/T) || softmax(z_i/T)), before weighting.
        ce_per_branch: CE(z_i, y) per branch, shape (m,) (or (N, m) for "none").
        kl_per_branch: KL per branch, shape (m,) (or (N, m) for "none").
    """

    loss: torch.Tensor
    ce_branches: torch.Tensor
    ce_ensemble: torch.Tensor
    kl: torch.Tensor
    ce_per_branch: torch.Tensor
    kl_per_branch: torch.Tensor


def reduce_rows(rows: torch.Tensor, valid: torch.Tensor, reduction: str) -> torch.Tensor:
    """Reduce over dim 0: "mean" divides by the count of valid rows (0 rows -> 0, no sync)."""
    if reduction == "none":
        return rows
    total = rows.sum(0)
    if reduction == "sum":
        return total
    count = valid.sum().clamp_min(1).to(rows.dtype)
    return total / count


def reduce_terms(rows: RowTerms, reduction: str) -> ONELossTerms:
    """Turn per-row terms into the user-facing :class:`ONELossTerms`."""
    ce_b = reduce_rows(rows.ce_branch.detach(), rows.valid, reduction)
    kl_b = reduce_rows(rows.kl.detach(), rows.valid, reduction)
    return ONELossTerms(
        loss=reduce_rows(rows.loss, rows.valid, reduction),
        ce_branches=ce_b.sum(-1),
        ce_ensemble=reduce_rows(rows.ce_ensemble.detach(), rows.valid, reduction),
        kl=kl_b.sum(-1),
        ce_per_branch=ce_b,
        kl_per_branch=kl_b,
    )
