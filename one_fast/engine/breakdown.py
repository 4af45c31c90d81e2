"""What evaluation adds on request: accuracy per class, and the loss terms on a held-out split."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from ..methods import Method


@torch.no_grad()
def per_class_accuracy(model: nn.Module, method: Method, num_classes: int,
                       batches: Iterable[tuple[torch.Tensor, torch.Tensor]]
                       ) -> dict[str, list[float | None]]:
    """Accuracy of each member and of the ensemble on each class, in eval mode.

    Args:
        model: the multi-branch network (``model(x)`` -> ``(logits (N, m, C), gate)``).
        method: defines the ensemble (gated for ONE, averaged probabilities for dml/ensemble).
        num_classes: C.
        batches: (images, labels) batches.

    Returns:
        ``{"branch_0": [acc of class 0, ...], ..., "ensemble": [...]}`` (names as
        ``method.metric_names``); a class absent from the batches gets None.
    """
    was_training = model.training
    model.eval()
    correct: torch.Tensor | None = None  # (m[+1], C)
    seen = None
    for x, y in batches:
        outputs = model(x)
        preds = [outputs[0].argmax(-1)]  # (N, m)
        ensemble = method.ensemble_logits(outputs)
        if ensemble is not None:
            preds.append(ensemble.argmax(-1, keepdim=True))
        hits = (torch.cat(preds, 1) == y[:, None]).to(torch.int64)  # (N, m[+1])
        batch = torch.zeros(hits.shape[1], num_classes, dtype=torch.int64, device=y.device)
        batch.index_add_(1, y, hits.t())
        counts = torch.bincount(y, minlength=num_classes)
        correct = batch if correct is None else correct + batch
        seen = counts if seen is None else seen + counts
    model.train(was_training)
    if correct is None or seen is None:
        raise ValueError("per-class evaluation got no batches")
    names = method.metric_names(outputs[0].shape[1])
    totals = seen.tolist()
    return {name: [c / n if n else None for c, n in zip(row, totals, strict=True)]
            for name, row in zip(names, correct.tolist(), strict=True)}


@torch.no_grad()
def mean_loss_terms(model: nn.Module, method: Method,
                    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                    kl_weight: float) -> dict[str, float]:
    """The method's loss terms averaged over every image of ``batches``, in eval mode.

    Args:
        model: the multi-branch network.
        method: the training method (its ``loss`` and ``term_names``).
        batches: (images, labels) batches.
        kl_weight: weight of the distillation term (the run's last scheduled value).

    Returns:
        ``{term name: mean over images}`` (the first is "loss").
    """
    was_training = model.training
    model.eval()
    sums: torch.Tensor | None = None
    images = 0
    for x, y in batches:
        terms = method.loss(model(x), y, kl_weight).terms
        batch = torch.stack([terms[name].double() for name in method.term_names]) * len(y)
        sums = batch if sums is None else sums + batch
        images += len(y)
    model.train(was_training)
    if sums is None:
        raise ValueError("loss evaluation got no batches")
    return {name: value / images for name, value in zip(method.term_names, sums.tolist(),
                                                        strict=True)}
