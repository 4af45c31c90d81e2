"""The ONE loss in plain PyTorch: the specification every fused backend is tested against.

For a row with label y, branch logits z_i (i = 1..m), gate weights g (summing to 1) and
temperature T::

    z_e = sum_i g_i z_i                                   (gated ensemble teacher)
    L   = sum_i CE(z_i, y) + CE(z_e, y)
          + kl_weight * T^2 * sum_i KL(softmax(z_e / T) || softmax(z_i / T))

With ``detach_teacher`` the KL sees z_e as a constant (the ONE authors' code); the teacher still
learns from CE(z_e, y). Everything is computed in float32 whatever the input dtype (float64 stays
float64, so gradcheck is meaningful).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .terms import RowTerms


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float64 stays float64, everything else becomes float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def row_terms(
    logits: torch.Tensor,
    gate: torch.Tensor,
    target: torch.Tensor,
    temperature: float,
    kl_weight: float | torch.Tensor,
    detach_teacher: bool,
    ignore_index: int,
) -> RowTerms:
    """Per-row ONE loss terms for logits (N, m, C), gate (N, m), target (N,)."""
    dtype = compute_dtype(logits.dtype)
    z = logits.to(dtype)  # (N, m, C)
    g = gate.to(dtype)  # (N, m)
    n, m, c = z.shape
    valid = target != ignore_index  # (N,)
    safe_target = torch.where(valid, target, torch.zeros_like(target)).long()

    z_e = torch.einsum("nm,nmc->nc", g, z)  # (N, C)

    log_p = F.log_softmax(z, dim=-1)  # (N, m, C)
    ce_branch = -log_p.gather(2, safe_target.view(n, 1, 1).expand(n, m, 1)).squeeze(2)
    ce_ensemble = -F.log_softmax(z_e, dim=-1).gather(1, safe_target.view(n, 1)).squeeze(1)

    teacher = z_e.detach() if detach_teacher else z_e
    log_q_e = F.log_softmax(teacher / temperature, dim=-1).unsqueeze(1)  # (N, 1, C)
    log_q = F.log_softmax(z / temperature, dim=-1)  # (N, m, C)
    kl = (log_q_e.exp() * (log_q_e - log_q)).sum(-1)  # (N, m)

    zero = z.new_zeros(())
    ce_branch = torch.where(valid[:, None], ce_branch, zero)
    ce_ensemble = torch.where(valid, ce_ensemble, zero)
    kl = torch.where(valid[:, None], kl, zero)
    loss = ce_branch.sum(1) + ce_ensemble + (kl_weight * temperature**2) * kl.sum(1)
    return RowTerms(loss, ce_branch.detach(), ce_ensemble.detach(), kl.detach(), valid)
