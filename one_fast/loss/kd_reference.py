"""Hinton knowledge distillation in plain PyTorch: the specification of :func:`one_fast.kd_loss`.

For a row with label y, student logits z_s, teacher logits z_t and temperature T::

    L = CE(z_s, y) + kd_weight * T^2 * KL(softmax(z_t / T) || softmax(z_s / T))

The teacher is a constant: no gradient ever reaches ``teacher_logits``. Everything is computed in
float32 whatever the input dtype (float64 stays float64, so gradcheck is meaningful).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from .cross_entropy import cross_entropy_rows
from .reference import compute_dtype


class KDRowTerms(NamedTuple):
    """Per-row KD terms; rows whose target is ``ignore_index`` hold 0.

    ``loss`` (N,) = ``ce + kd_weight * T**2 * kl``, the only one with autograd history;
    ``ce`` (N,) is CE(z_s, y); ``kl`` (N,) is KL(softmax(z_t/T) || softmax(z_s/T)), unweighted
    (zeros, not computed, when ``kd_weight`` is the number 0); ``valid`` (N,) bool.
    """

    loss: torch.Tensor
    ce: torch.Tensor
    kl: torch.Tensor
    valid: torch.Tensor


def is_zero_weight(weight: float | torch.Tensor) -> bool:
    """True for a Python number equal to 0: the weighted terms need not be computed at all.

    A tensor weight is never "zero" here: knowing its value would read it back from the device,
    which a compiled or CUDA-graph step must not do, so its terms are always computed.
    """
    return not isinstance(weight, torch.Tensor) and weight == 0


def soft_kl(teacher_log_q: torch.Tensor, student_log_q: torch.Tensor) -> torch.Tensor:
    """KL(q_t || q_s) = sum_c q_t (log q_t - log q_s) over the last dimension.

    Classes the teacher gives probability 0 (a -inf logit) contribute 0, not 0 * inf = NaN.
    """
    q_t = teacher_log_q.exp()
    parts = q_t * (teacher_log_q - student_log_q)
    return torch.where(q_t > 0, parts, torch.zeros_like(parts)).sum(-1)


def row_terms(
    logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor,
    temperature: float,
    kd_weight: float | torch.Tensor,
    ignore_index: int,
) -> KDRowTerms:
    """Per-row KD terms for student logits (N, C), teacher logits (N, C), target (N,)."""
    dtype = compute_dtype(logits.dtype)
    z = logits.to(dtype)  # (N, C)
    valid = target != ignore_index  # (N,)
    safe_target = torch.where(valid, target, torch.zeros_like(target)).long()
    zero = z.new_zeros(())

    ce = torch.where(valid, cross_entropy_rows(z, safe_target), zero)
    if is_zero_weight(kd_weight):
        kl = torch.zeros_like(ce)
        loss = ce
    else:
        teacher = teacher_logits.detach().to(dtype)
        kl = soft_kl(F.log_softmax(teacher / temperature, dim=-1),
                     F.log_softmax(z / temperature, dim=-1))
        kl = torch.where(valid, kl, zero)
        loss = ce + (kd_weight * temperature**2) * kl
    return KDRowTerms(loss, ce.detach(), kl.detach(), valid)
