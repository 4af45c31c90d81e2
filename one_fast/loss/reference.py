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


# |delta| below which phi(delta) = e^-delta - 1 + delta is summed as its Taylor series: there
# expm1(-delta) + delta cancels (relative error ~ 2 eps / |delta|). The series to delta^7 has a
# truncation error of ~delta^6 / 5040 relative (in phi's derivative): 2e-10 at 0.1, far below
# float32's eps, and 3e-18 at 0.005 for float64 (where the direct form's 2 eps / |delta| is 4e-14).
_SERIES_BELOW = {torch.float32: 0.1, torch.float64: 0.005}
# Up to this temperature the textbook KL is as accurate as float32 allows (its cancellation error
# grows with T: figures in BENCHMARKS.md) and it is what the fused kernels compute, so the
# reference uses it there; above, the cancellation-free form (softened_kl).
TEXTBOOK_UP_TO_TEMPERATURE = 10.0


def _phi(delta: torch.Tensor) -> torch.Tensor:
    """e^-delta - 1 + delta, without cancellation for small |delta| (>= 0 everywhere)."""
    series = delta * delta * (0.5 + delta * (-1 / 6 + delta * (1 / 24 + delta * (
        -1 / 120 + delta * (1 / 720 - delta / 5040)))))
    small = delta.abs() < _SERIES_BELOW[delta.dtype]
    direct = torch.expm1(-torch.where(small, torch.ones_like(delta), delta)) + delta
    return torch.where(small, series, direct)


def textbook_kl(teacher: torch.Tensor, z: torch.Tensor, temperature: float) -> torch.Tensor:
    """sum_c q_e (log q_e - log q_i): (N, C) teacher and (N, m, C) branch logits -> (N, m)."""
    log_q_e = F.log_softmax(teacher / temperature, dim=-1).unsqueeze(1)  # (N, 1, C)
    return (log_q_e.exp() * (log_q_e - F.log_softmax(z / temperature, dim=-1))).sum(-1)


def softened_kl(teacher: torch.Tensor, z: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(softmax(z_e/T) || softmax(z_i/T)) for every branch, accurate at any temperature.

    Textbook form: sum_c q_e (log q_e - log q_i), with log q = z/T - logsumexp(z/T). At high T
    both log-softmaxes are close to -log C and their difference cancels: the absolute error
    stays ~eps * log C while the KL shrinks like 1/T^2 (float32: relative error 1e-3 at
    T = 1000). Rewritten with d = (z_e - z_i)/T, mu = E_qe[d] and delta = d - mu (so
    E_qe[delta] = 0)::

        log q_e - log q_i = d - log E_qe[e^-d]      =>      KL = log E_qe[e^-delta]
                          = log1p(E_qe[phi(delta)]),  phi(delta) = e^-delta - 1 + delta >= 0

    a sum of non-negative terms with no cancellation (``_phi`` sums small |delta| as a series).
    Where some |delta| > 1 (branches far from the teacher, so the KL is not small and e^-delta
    could overflow) the textbook form is used: there it is accurate.

    Args:
        teacher: (N, C) ensemble logits z_e (detached or not).
        z: (N, m, C) branch logits, same dtype.
        temperature: T > 0.

    Returns:
        (N, m) KL per row and branch.
    """
    a = teacher.unsqueeze(1) / temperature  # (N, 1, C)
    log_q_e = F.log_softmax(a, dim=-1)
    q_e = log_q_e.exp()
    d = (teacher.unsqueeze(1) - z) / temperature  # (N, m, C)
    delta = d - (q_e * d).sum(-1, keepdim=True)
    near = delta.abs().amax(-1) <= 1.0  # (N, m): rows where the series form applies
    # Clamp so rows using the textbook form cannot overflow (an inf there would poison the
    # gradient through torch.where); in the rows that use it the clamp is the identity.
    kl_near = torch.log1p((q_e * _phi(delta.clamp(-1.0, 1.0))).sum(-1))
    return torch.where(near, kl_near, textbook_kl(teacher, z, temperature))


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
    if temperature > TEXTBOOK_UP_TO_TEMPERATURE:
        kl = softened_kl(teacher, z, temperature)  # (N, m)
    else:
        kl = textbook_kl(teacher, z, temperature)

    zero = z.new_zeros(())
    ce_branch = torch.where(valid[:, None], ce_branch, zero)
    ce_ensemble = torch.where(valid, ce_ensemble, zero)
    kl = torch.where(valid[:, None], kl, zero)
    loss = ce_branch.sum(1) + ce_ensemble + (kl_weight * temperature**2) * kl.sum(1)
    return RowTerms(loss, ce_branch.detach(), ce_ensemble.detach(), kl.detach(), valid)
