"""Deep Mutual Learning: m independent peers, each distilled from the others (Zhang et al. 2018)."""

from __future__ import annotations

from typing import ClassVar

import torch

from ..loss import dml_loss
from .base import Method, MethodLoss, Outputs, averaged_probability_logits
from .independent import INDEPENDENT_MEMBERS


class DMLMethod(Method):
    """m fully independent peers trained jointly with dml_loss (Deep Mutual Learning).

    Args:
        temperature: T of the KL terms (Zhang et al. use 1).
        distill: False drops the KL terms (then DML is the m-Net ensemble's loss); the loss
            gets the number 0 as its KL weight, so they are not computed.
    """

    name = "dml"
    summary = "m independent peers, each distilled from the others"
    term_names: ClassVar[tuple[str, ...]] = ("loss", "ce_branches", "kl")
    has_ensemble = True
    min_branches = 2
    required_model = INDEPENDENT_MEMBERS
    ensemble_output = "log_probabilities"

    def __init__(self, temperature: float = 1.0, distill: bool = True) -> None:
        self.temperature = temperature
        self.distill = distill

    def loss(self, outputs: Outputs, target: torch.Tensor,
             kl_weight: float | torch.Tensor) -> MethodLoss:
        t = dml_loss(outputs[0], target, temperature=self.temperature,
                     kl_weight=kl_weight if self.distill else 0.0, return_terms=True)
        return MethodLoss(t.loss, {"loss": t.loss.detach(), "ce_branches": t.ce_branches,
                                   "kl": t.kl})

    def ensemble_logits(self, outputs: Outputs) -> torch.Tensor:
        """log of the peers' averaged softmax probabilities."""
        return averaged_probability_logits(outputs[0])

    def __repr__(self) -> str:
        return f"DMLMethod(temperature={self.temperature}, distill={self.distill})"
