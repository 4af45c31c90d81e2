"""The reference spec under the fused-op contract: the "reference" backend's per-chunk kernel
of ``fused_linear_one_loss`` (it runs where no fused kernel does)."""

from __future__ import annotations

import torch

from . import reference
from .reference import compute_dtype


def op(logits, gate, target, kl_weight, temperature, detach_teacher, ignore_index, compute_grad):
    """The six outputs of :data:`one_fast.loss.fused_op.FUSED_SCHEMA`, from the reference.

    Per-row gradients come from ``torch.func.vjp`` with a cotangent of ones: rows are
    independent, so d(sum_n loss_n)/d logits[n] = d loss_n / d logits[n]. (``torch.func`` works
    inside a custom operator, where the autograd dispatch keys are already excluded.)
    """
    acc = compute_dtype(logits.dtype)
    klw = kl_weight.to(acc).reshape(())  # 0-d: keeps the loss in the accumulation dtype

    def loss_rows(z, g):
        rows = reference.row_terms(z, g, target, temperature, klw, detach_teacher, ignore_index)
        return rows.loss, rows

    if not compute_grad:
        rows = loss_rows(logits, gate)[1]
        empty = logits.new_empty((0,))
        return rows.loss, rows.ce_branch, rows.ce_ensemble, rows.kl, empty, empty.to(acc)
    loss, vjp, rows = torch.func.vjp(loss_rows, logits, gate, has_aux=True)
    d_logits, d_gate = vjp(torch.ones_like(loss))
    return loss, rows.ce_branch, rows.ce_ensemble, rows.kl, d_logits, d_gate.to(acc)
