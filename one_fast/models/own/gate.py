"""ONE's gate on any trunk output: pool, Linear -> BatchNorm1d -> ReLU -> softmax over branches."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def pool(features: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> global average over H, W; (N, L, C) tokens -> mean over L; (N, C) kept.

    Raises:
        ValueError: any other shape, naming it.
    """
    if features.dim() == 4:
        return features.mean((2, 3))
    if features.dim() == 3:
        return features.mean(1)
    if features.dim() == 2:
        return features
    raise ValueError(f"the gate reads the trunk output, expected (N, C, H, W), (N, L, C) or "
                     f"(N, C); got shape {tuple(features.shape)}")


class ONEGate(nn.Module):
    """The ONE authors' gate: pooled trunk features -> Linear(C, m) -> BN1d(m) -> ReLU -> softmax.

    Args:
        channels: C, the width of the trunk output (channels, or a token's features).
        num_branches: m (>= 2).

    Returns (from ``forward(features)``): gate weights (N, m), rows summing to 1.
    """

    def __init__(self, channels: int, num_branches: int) -> None:
        super().__init__()
        self.fc = nn.Linear(channels, num_branches)
        self.bn = nn.BatchNorm1d(num_branches)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.softmax(F.relu(self.bn(self.fc(pool(features)))), dim=1)
