"""The KD term of winycg/MCL-OKD's training scripts (main_cifar_*.py), as written there."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn


class DistillKL(nn.Module):
    """The reference code's KD term, as written there."""

    def __init__(self, T):
        super().__init__()
        self.T = T

    def forward(self, y_s, y_t):
        p_s = F.log_softmax(y_s / self.T, dim=1)
        p_t = F.softmax(y_t / self.T, dim=1)
        return F.kl_div(p_s, p_t, reduction="batchmean") * (self.T**2)
