"""Per-row cross-entropy whose true-class gradient keeps its precision on confident rows.

Autograd through ``-log_softmax(z)[y]`` forms the true-class gradient as ``p_y - 1``, a
difference that rounds to 0 once p_y is within an ulp of 1, although 1 - p_y (the sum of every
other class's probability) is still well defined. Here the log-probabilities are computed with
the max's own term left out of the normaliser's sum::

    lse(z) = max + log1p(rest),   rest = sum_{c != argmax} exp(z_c - max)

so ``log p_y`` of a confident row is ``-log1p(rest)`` to a few ulps of ``rest``, and the
backward writes the true-class entry as ``expm1(log p_y)`` = -(1 - p_y) (the form every new
loss's true-class term should take), while every other entry is p_c = exp(log p_c), accurate on
its own.
"""

from __future__ import annotations

import torch


def log_softmax_rest(z: torch.Tensor) -> torch.Tensor:
    """log softmax over the last dimension via ``max + log1p(rest)`` (see the module docstring).

    Not differentiable by autograd in a useful way (the max's term is left out of the sum); use
    it on detached values. Rows of identical values, -inf entries and NaN behave as in
    ``torch.log_softmax`` (a NaN reaches the whole row).
    """
    top, where = z.max(-1, keepdim=True)  # (..., 1)
    d = z - top
    rest = torch.exp(d).scatter(-1, where, 0.0).sum(-1, keepdim=True)
    return d - torch.log1p(rest)


class _CrossEntropyRows(torch.autograd.Function):
    """CE(z, y) = -log p_y per row, with the backward p - onehot written without cancellation."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_p = log_softmax_rest(z)
        index = target.unsqueeze(-1)
        ctx.save_for_backward(log_p, index)
        return -log_p.gather(-1, index).squeeze(-1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        log_p, index = ctx.saved_tensors
        # p_c for c != y; at y: p_y - 1 = expm1(log p_y), exact to ulps of 1 - p_y itself.
        dz = torch.exp(log_p).scatter(-1, index, torch.expm1(log_p.gather(-1, index)))
        return grad.unsqueeze(-1) * dz, None


def cross_entropy_rows(z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """-log softmax(z)[target] over the last dimension, differentiable w.r.t. ``z``.

    Args:
        z: (..., C) logits in the accumulation dtype (float32 or float64).
        target: (...) int64 class indices in [0, C) (callers replace ignored rows beforehand).

    Returns:
        (...) cross-entropy, the dtype of ``z``.
    """
    return _CrossEntropyRows.apply(z, target)
