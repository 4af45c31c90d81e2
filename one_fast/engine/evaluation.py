"""Top-1 accuracy of every branch (member) and of the method's ensemble on a held-out split."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from ..methods import Method


class Evaluator:
    """Runs the model in eval mode over batches and reports the method's accuracies.

    The counting is the method's (:meth:`~one_fast.methods.Method.correct_counts`): one entry
    per branch or member, then the ensemble's where the method has one (ONE-E for ONE, the
    averaged probabilities for dml and ensemble); the names are ``method.metric_names(m)``.

    Args:
        model: the network (unwrapped, not DDP; for kd the student alone); ``model(x)`` ->
            ``(logits (N, m, C), gate (N, m))``.
        method: the training method.
        amp_dtype: autocast dtype (as in training) or None.
        compile: compile the forward + counting (one graph per batch shape).
        all_reduce: optional callable summing a tensor across processes in place (DDP).
    """

    def __init__(self, model: nn.Module, method: Method, *, amp_dtype: torch.dtype | None = None,
                 compile: bool = False,
                 all_reduce: Callable[[torch.Tensor], None] | None = None) -> None:
        self.model = model
        self.method = method
        self.amp_dtype = amp_dtype
        self.all_reduce = all_reduce
        self._counts = torch.compile(self._batch_counts, fullgraph=True) if compile \
            else self._batch_counts

    def _batch_counts(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            outputs = self.model(x)
        return self.method.correct_counts(outputs, y)

    @torch.no_grad()
    def __call__(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
        """Accuracy in [0, 1]: keys "branch_0".."branch_{m-1}" and, if any, "ensemble"."""
        was_training = self.model.training
        self.model.eval()
        counts: torch.Tensor | None = None
        total = None
        for x, y in batches:
            batch = self._counts(x, y)
            counts = batch if counts is None else counts + batch
            n = torch.tensor(y.shape[0], device=y.device)
            total = n if total is None else total + n
        self.model.train(was_training)
        if counts is None or total is None:
            raise ValueError("evaluation got no batches")
        both = torch.cat([counts, total.view(1)]).to(torch.float64)
        if self.all_reduce is not None:
            self.all_reduce(both)
        values = both.tolist()
        members = len(values) - 1 - int(self.method.has_ensemble)
        names = self.method.metric_names(members)
        return {name: v / values[-1] for name, v in zip(names, values[:-1], strict=True)}
