"""Collaborative learning with intermediate-level representation sharing: ``cl_ilr_loss``.

The loss of Song & Chai, "Collaborative Learning for Deep Neural Networks" (NeurIPS 2018), as
the public code that compares the online-distillation methods under one protocol
(winycg/MCL-OKD, ``main_cifar_cl_ilr.py``) trains it. For a row with label y, branch logits
z_1..z_m (m >= 2) and temperature T::

    t_i = 1/(m-1) sum_{j != i} z_j                      (detached: a constant target)
    L   = sum_i [ 0.5 * CE(z_i, y) + 0.5 * T^2 * KL(softmax(t_i/T) || softmax(z_i/T)) ]

Plain PyTorch (this file is the specification; it is small next to the network). Everything is
computed in float32 whatever the input dtype (float64 stays float64, for gradchecks).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from .cross_entropy import cross_entropy_rows
from .dml import validate_dml_loss_args
from .kd_reference import soft_kl
from .reference import compute_dtype
from .terms import reduce_rows
from .validation import describe

# The weight of each branch's cross-entropy and of its distillation term in that code.
CE_SHARE = 0.5
KL_SHARE = 0.5


class CLILRLossTerms(NamedTuple):
    """The CL-ILR loss and its parts, reduced like the loss ("mean", "sum" or per row).

    ``loss = 0.5 * ce_branches + 0.5 * T**2 * kl``. Only ``loss`` is differentiable.

    Attributes:
        loss: the training loss (what ``cl_ilr_loss`` returns).
        ce_branches: sum over branches of CE(z_i, y), unweighted.
        kl: sum over branches of KL(softmax(t_i/T) || softmax(z_i/T)), unweighted.
        ce_per_branch: CE(z_i, y) per branch, shape (m,) (or (N, m) for "none").
        kl_per_branch: KL per branch, shape (m,) (or (N, m) for "none").
    """

    loss: torch.Tensor
    ce_branches: torch.Tensor
    kl: torch.Tensor
    ce_per_branch: torch.Tensor
    kl_per_branch: torch.Tensor


def validate_cl_ilr_loss_args(logits, target, temperature, ignore_index, reduction) -> None:
    """Raise ``ValueError``/``TypeError`` naming the offending argument: ``dml_loss``'s checks
    (``logits`` (N, m, C), ``target`` (N,) integer, the options) and m >= 2."""
    validate_dml_loss_args(logits, target, temperature, 1.0, ignore_index, reduction)
    if logits.shape[1] < 2:
        raise ValueError(f"logits must hold at least two branches (dim 1): each branch learns "
                         f"from the others' mean, got {describe(logits)}")


def cl_ilr_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    temperature: float = 2.0,
    ignore_index: int = -100,
    reduction: str = "mean",
    return_terms: bool = False,
) -> torch.Tensor | CLILRLossTerms:
    """The CL-ILR loss of m branches (Song & Chai 2018, as winycg/MCL-OKD trains it).

    For each row n whose target is not ``ignore_index``, with t_i the mean of the *other*
    branches' logits (a constant: no gradient flows into it)::

        L_n = sum_i [ 0.5 * CE(z_i, y) + 0.5 * T^2 * KL(softmax(t_i/T) || softmax(z_i/T)) ]

    With "mean" each term is the batch mean that code's ``CrossEntropyLoss`` and
    ``kl_div(..., reduction="batchmean")`` compute (over the non-ignored rows here).

    Args:
        logits: (N, m, C) branch logits, m >= 2, float32/bfloat16/float16 (float64 for
            gradchecks).
        target: (N,) integer labels in [0, C), or ``ignore_index``.
        temperature: T > 0 of the softened distributions (that code's ``--kd_T``, 2).
        ignore_index: rows with this target contribute 0 and are not counted by "mean".
        reduction: "mean" (over non-ignored rows; 0 rows give 0), "sum", or "none" (per row).
        return_terms: also return the loss parts for logging.

    Returns:
        The float32 loss (float64 for float64 input), or a :class:`CLILRLossTerms`.
    """
    validate_cl_ilr_loss_args(logits, target, temperature, ignore_index, reduction)
    dtype = compute_dtype(logits.dtype)
    z = logits.to(dtype)  # (N, m, C)
    n, m, _ = z.shape
    valid = target != ignore_index
    safe_target = torch.where(valid, target, torch.zeros_like(target)).long()
    zero = z.new_zeros(())
    ce = torch.where(valid[:, None], cross_entropy_rows(z, safe_target[:, None].expand(n, m)),
                     zero)  # (N, m)
    # t_i = the others' mean, summed directly (not sum - z_i, which cancels on large logits).
    mix = (1 - torch.eye(m, dtype=dtype, device=z.device)) / (m - 1)  # (m, m), zero diagonal
    others = torch.einsum("ij,njc->nic", mix, z.detach())  # (N, m, C)
    kl = soft_kl(F.log_softmax(others / temperature, dim=-1),
                 F.log_softmax(z / temperature, dim=-1))  # (N, m)
    kl = torch.where(valid[:, None], kl, zero)
    rows = CE_SHARE * ce.sum(1) + (KL_SHARE * temperature**2) * kl.sum(1)
    ce_b = reduce_rows(ce.detach(), valid, reduction)
    kl_b = reduce_rows(kl.detach(), valid, reduction)
    terms = CLILRLossTerms(loss=reduce_rows(rows, valid, reduction), ce_branches=ce_b.sum(-1),
                           kl=kl_b.sum(-1), ce_per_branch=ce_b, kl_per_branch=kl_b)
    return terms if return_terms else terms.loss


__all__ = ["CE_SHARE", "KL_SHARE", "CLILRLossTerms", "cl_ilr_loss"]
