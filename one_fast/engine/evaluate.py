"""Top-1 accuracy of every branch and of the gated ensemble (ONE-E) on a held-out split."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn


def correct_counts(logits: torch.Tensor, gate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Correct predictions per branch and for the ensemble: shape (m + 1,), int64.

    logits (N, m, C), gate (N, m), target (N,). The ensemble's logits are sum_i g_i z_i, the
    teacher the ONE loss distils from.
    """
    ensemble = torch.einsum("nm,nmc->nc", gate.float(), logits.float())
    preds = torch.cat([logits.argmax(-1), ensemble.argmax(-1, keepdim=True)], 1)  # (N, m+1)
    return (preds == target[:, None]).sum(0)


class Evaluator:
    """Runs the model in eval mode over batches and reports per-branch and ensemble accuracy.

    Args:
        model: the network (unwrapped, not DDP); ``model(x)`` -> ``(logits, gate)``.
        amp_dtype: autocast dtype (as in training) or None.
        compile: compile the forward + counting (one graph per batch shape).
        all_reduce: optional callable summing a tensor across processes in place (DDP).
    """

    def __init__(self, model: nn.Module, *, amp_dtype: torch.dtype | None = None,
                 compile: bool = False,
                 all_reduce: Callable[[torch.Tensor], None] | None = None) -> None:
        self.model = model
        self.amp_dtype = amp_dtype
        self.all_reduce = all_reduce
        self._counts = torch.compile(self._batch_counts, fullgraph=True) if compile \
            else self._batch_counts

    def _batch_counts(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            logits, gate = self.model(x)
        return correct_counts(logits, gate, y)

    @torch.no_grad()
    def __call__(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
        """Accuracy in [0, 1]: keys "branch_0".."branch_{m-1}" and "ensemble"."""
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
        names = [f"branch_{i}" for i in range(len(values) - 2)] + ["ensemble"]
        return {name: v / values[-1] for name, v in zip(names, values[:-1], strict=True)}
