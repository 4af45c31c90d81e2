"""Per-epoch schedules of the learning rate and the KL weight (pure functions of the epoch)."""

from __future__ import annotations

import math
from collections.abc import Sequence

SCHEDULES = ("step", "cosine")


def learning_rate(epoch: int, base_lr: float, milestones: Sequence[int], decay: float, *,
                  schedule: str = "step", epochs: int | None = None) -> float:
    """The learning rate of (0-based) ``epoch``.

    Args:
        epoch: the epoch about to be trained, from 0.
        base_lr: the peak learning rate.
        milestones, decay: the step schedule: ``base_lr * decay**k`` with k the number of
            milestones <= epoch.
        schedule: "step", or "cosine": ``base_lr * (1 + cos(pi * epoch / epochs)) / 2``, from
            ``base_lr`` at epoch 0 towards 0 (winycg/MCL-OKD's SGDR with T_0 = ``epochs``;
            milestones and decay are not read).
        epochs: the run's length (needed by "cosine").
    """
    if schedule == "cosine":
        if not epochs or epochs < 1:
            raise ValueError(f"the cosine schedule needs the run's epochs >= 1, got {epochs!r}")
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
    if schedule != "step":
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    return base_lr * decay ** sum(1 for m in milestones if epoch >= m)


def kl_weight(epoch: int, weight: float, rampup_epochs: int) -> float:
    """KL weight ramped up by exp(-5 (1 - t)^2), t = epoch / rampup_epochs clipped to [0, 1].

    This is the sigmoid-shaped ramp-up of the ONE authors' code; ``rampup_epochs=0`` disables it.
    """
    if rampup_epochs <= 0:
        return weight
    t = min(max(epoch / rampup_epochs, 0.0), 1.0)
    return weight * math.exp(-5.0 * (1.0 - t) ** 2)
