"""Per-epoch schedules of the learning rate and the KL weight (pure functions of the epoch)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def learning_rate(epoch: int, base_lr: float, milestones: Sequence[int], decay: float) -> float:
    """Step schedule: ``base_lr * decay**k`` with k the number of milestones <= epoch (0-based)."""
    return base_lr * decay ** sum(1 for m in milestones if epoch >= m)


def kl_weight(epoch: int, weight: float, rampup_epochs: int) -> float:
    """KL weight ramped up by exp(-5 (1 - t)^2), t = epoch / rampup_epochs clipped to [0, 1].

    This is the sigmoid-shaped ramp-up of the ONE authors' code; ``rampup_epochs=0`` disables it.
    """
    if rampup_epochs <= 0:
        return weight
    t = min(max(epoch / rampup_epochs, 0.0), 1.0)
    return weight * math.exp(-5.0 * (1.0 - t) ** 2)
