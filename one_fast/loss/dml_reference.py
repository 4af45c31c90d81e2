"""Deep Mutual Learning in plain PyTorch: the specification of :func:`one_fast.dml_loss`.

For a row with label y, peer logits z_1..z_m (m >= 1) and temperature T::

    q_i = softmax(z_i / T)
    L   = sum_i [ CE(z_i, y) + kl_weight * T^2 * 1/(m-1) * sum_{j != i} KL(q_j || q_i) ]

In peer i's term every q_j (j != i) is a constant: each peer learns from the others and never
pushes them. Zhang et al.'s Algorithm 1 updates the peers one after another, each against the
others' latest predictions; here all peers step together from the same batch's predictions
(what lets m peers train batched in one step). With m = 1 there is no peer and L is the plain
cross-entropy. Everything is computed in float32
whatever the input dtype (float64 stays float64).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from .cross_entropy import cross_entropy_rows
from .kd_reference import is_zero_weight, soft_kl
from .reference import compute_dtype


class DMLRowTerms(NamedTuple):
    """Per-row DML terms; rows whose target is ``ignore_index`` hold 0.

    ``loss`` (N,) = ``ce.sum(1) + kl_weight * T**2 * kl.sum(1)``, the only one with autograd
    history; ``ce`` (N, m) is CE(z_i, y); ``kl`` (N, m) is peer i's mean KL from the others,
    1/(m-1) sum_{j != i} KL(q_j || q_i), unweighted (zeros, not computed, for m = 1 or a
    ``kl_weight`` that is the number 0); ``valid`` (N,) bool.
    """

    loss: torch.Tensor
    ce: torch.Tensor
    kl: torch.Tensor
    valid: torch.Tensor


def row_terms(
    logits: torch.Tensor,
    target: torch.Tensor,
    temperature: float,
    kl_weight: float | torch.Tensor,
    ignore_index: int,
) -> DMLRowTerms:
    """Per-row DML terms for peer logits (N, m, C) and target (N,)."""
    dtype = compute_dtype(logits.dtype)
    z = logits.to(dtype)  # (N, m, C)
    n, m, _ = z.shape
    valid = target != ignore_index  # (N,)
    safe_target = torch.where(valid, target, torch.zeros_like(target)).long()
    zero = z.new_zeros(())

    ce = cross_entropy_rows(z, safe_target.view(n, 1).expand(n, m))  # (N, m)
    ce = torch.where(valid[:, None], ce, zero)
    if m == 1 or is_zero_weight(kl_weight):
        kl = torch.zeros_like(ce)
        loss = ce.sum(1)
    else:
        log_q = F.log_softmax(z / temperature, dim=-1)  # (N, m, C)
        # pair[n, j, i] = KL(q_j || q_i): teacher j (constant) along dim 1, student i along dim 2.
        pair = soft_kl(log_q.detach().unsqueeze(2), log_q.unsqueeze(1))  # (N, m, m)
        # The diagonal KL(q_i || q_i) is 0 but would still send (q_i - q_i.detach()) / T = 0 up
        # to rounding into z_i: leave it out rather than add noise.
        off_diagonal = ~torch.eye(m, dtype=torch.bool, device=z.device)
        kl = torch.where(off_diagonal, pair, zero).sum(1) / (m - 1)  # (N, m)
        kl = torch.where(valid[:, None], kl, zero)
        loss = ce.sum(1) + (kl_weight * temperature**2) * kl.sum(1)
    return DMLRowTerms(loss, ce.detach(), kl.detach(), valid)
