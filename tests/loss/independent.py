"""An independently written float64 ONE loss (explicit log-sum-exp sums, one row at a time).

Deliberately shares no code with one_fast.loss.reference: it is the yardstick for the spec.
"""

from __future__ import annotations

import torch


def _logsumexp(v: torch.Tensor) -> torch.Tensor:
    top = v.max()
    return top + torch.log(torch.exp(v - top).sum())


def independent_one_loss(logits, gate, target, temperature, kl_weight, detach_teacher,
                         ignore_index, reduction):
    """Returns (loss, per-row terms dict) in float64; differentiable w.r.t. logits and gate."""
    z_all = logits.double()
    g_all = gate.double()
    n, m, _ = z_all.shape
    rows, ce_rows, cee_rows, kl_rows = [], [], [], []
    for r in range(n):
        y = int(target[r])
        if y == ignore_index:
            rows.append(z_all[r].sum() * 0.0)  # zero, but keeps autograd's graph connected
            ce_rows.append(z_all.new_zeros(m))
            cee_rows.append(z_all.new_zeros(()))
            kl_rows.append(z_all.new_zeros(m))
            continue
        z = z_all[r]
        teacher = sum(g_all[r, i] * z[i] for i in range(m))
        ce = torch.stack([_logsumexp(z[i]) - z[i, y] for i in range(m)])
        ce_e = _logsumexp(teacher) - teacher[y]
        t = teacher.detach() if detach_teacher else teacher
        log_qe = t / temperature - _logsumexp(t / temperature)
        kls = []
        for i in range(m):
            log_qi = z[i] / temperature - _logsumexp(z[i] / temperature)
            kls.append((torch.exp(log_qe) * (log_qe - log_qi)).sum())
        kl = torch.stack(kls)
        rows.append(ce.sum() + ce_e + kl_weight * temperature * temperature * kl.sum())
        ce_rows.append(ce.detach())
        cee_rows.append(ce_e.detach())
        kl_rows.append(kl.detach())
    per_row = torch.stack(rows)
    count = sum(1 for r in range(n) if int(target[r]) != ignore_index)
    if reduction == "none":
        loss = per_row
    elif reduction == "sum":
        loss = per_row.sum()
    else:
        loss = per_row.sum() / max(count, 1)
    terms = {"ce": torch.stack(ce_rows), "ce_e": torch.stack(cee_rows), "kl": torch.stack(kl_rows)}
    return loss, terms
