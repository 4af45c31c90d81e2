"""CL-ILR: a tree of branches, each distilled from the others' mean (Song & Chai 2018)."""

from __future__ import annotations

from typing import ClassVar

import torch

from ..loss import cl_ilr_loss
from ..models.factory import LAYOUT_SHARING
from .base import Method, MethodLoss, Outputs


class CLILRMethod(Method):
    """Collaborative learning with backward-rescaled shared stages, as winycg/MCL-OKD runs it.

    The network is the CL-ILR tree (``layout="cl_ilr"``: stage 1 shared, stage 2 per pair of
    branches, stage 3 per branch, gradients rescaled at each split); the loss is
    :func:`~one_fast.loss.cl_ilr.cl_ilr_loss`: per branch 0.5 CE + 0.5 T^2 KL from the mean of
    the other branches' logits (detached). No weight to ramp: that code weighs the terms 0.5
    and 0.5 from the first step. The student is branch 0; the ensemble the mean of the
    branches' logits.

    Args:
        temperature: T of the KL terms (that code's 2).
    """

    name = "cl_ilr"
    summary = "a tree of branches (shared stage 1, stage 2 per pair), each distilled from the " \
              "others' mean"
    term_names: ClassVar[tuple[str, ...]] = ("loss", "ce_branches", "kl")
    has_ensemble = True
    min_branches = 2
    layout = "cl_ilr"
    required_model = LAYOUT_SHARING[layout]

    def __init__(self, temperature: float = 2.0) -> None:
        self.temperature = temperature

    def loss(self, outputs: Outputs, target: torch.Tensor,
             kl_weight: float | torch.Tensor) -> MethodLoss:
        t = cl_ilr_loss(outputs[0], target, temperature=self.temperature, return_terms=True)
        return MethodLoss(t.loss, {"loss": t.loss.detach(), "ce_branches": t.ce_branches,
                                   "kl": t.kl})

    def ensemble_logits(self, outputs: Outputs) -> torch.Tensor:
        """The mean of the branches' logits."""
        return outputs[0].float().mean(1)

    def __repr__(self) -> str:
        return f"CLILRMethod(temperature={self.temperature})"
