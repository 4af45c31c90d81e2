"""Every member's logits (and the gate) on the whole test split, in eval mode."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from ..methods import create_method


@dataclass
class MemberOutputs:
    """The network's outputs on the test split, on the CPU in float32.

    Attributes:
        logits: (N, m, C) per member.
        gate: (N, m) the gate's weights (uniform or unused outside ONE).
        labels: (N,) int64.
    """

    logits: torch.Tensor
    gate: torch.Tensor
    labels: torch.Tensor

    def errors_percent(self) -> torch.Tensor:
        """(m,) float64 test error (%) of each member: 100 x (1 - correct / N), computed as the
        trainer computes its accuracy (float64 counts), so equal weights give equal numbers."""
        correct = (self.logits.argmax(-1) == self.labels[:, None]).sum(0)
        return 100.0 * (1.0 - correct.to(torch.float64) / self.labels.numel())

    def ensemble_error_percent(self, method: str = "one") -> float | None:
        """Test error (%) of the run's ensemble as its method defines it (ONE: the gated sum
        sum_i g_i z_i; dml, ensemble: the members' averaged probabilities), or None for a
        method without an ensemble (baseline, kd)."""
        ensemble = create_method(method).ensemble_logits((self.logits, self.gate))
        if ensemble is None:
            return None
        correct = float((ensemble.argmax(-1) == self.labels).sum().item())
        return 100.0 * (1.0 - correct / self.labels.numel())


@torch.no_grad()
def member_outputs(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                 amp_dtype: torch.dtype | None = None) -> MemberOutputs:
    """Run ``model`` (eval mode: BatchNorm uses its running statistics) over ``batches``.

    Args:
        model: ``model(x)`` -> ``(logits (N, m, C), gate (N, m))``.
        batches: (images, labels) pairs, e.g. ``loader.eval_batches()``.
        amp_dtype: autocast dtype as in the run's evaluation, or None for float32.

    Returns:
        :class:`MemberOutputs`.
    """
    was_training = model.training
    model.eval()
    logits, gates, labels = [], [], []
    try:
        for x, y in batches:
            with torch.autocast(x.device.type, dtype=amp_dtype or torch.float32,
                                enabled=amp_dtype is not None):
                z, g = model(x)
            logits.append(z.float().cpu())
            gates.append(g.float().cpu())
            labels.append(y.cpu())
    finally:
        model.train(was_training)
    if not labels:
        raise ValueError("the test split gave no batches")
    return MemberOutputs(torch.cat(logits), torch.cat(gates), torch.cat(labels))


__all__ = ["MemberOutputs", "member_outputs"]
