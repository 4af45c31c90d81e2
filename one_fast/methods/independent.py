"""Methods without a teacher inside the network: the plain baseline and m-Net ensembles."""

from __future__ import annotations

from types import MappingProxyType
from typing import ClassVar

import torch

from ..loss import dml_loss
from .base import Method, MethodLoss, Outputs, averaged_probability_logits

# Fully independent members: nothing shared (stem included), no gate.
INDEPENDENT_MEMBERS = MappingProxyType({"shared_stages": 0, "share_stem": False, "gate": False})


def _cross_entropy_sum(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over rows of sum_i CE(z_i, y): dml_loss without its KL terms (not computed)."""
    return dml_loss(logits, target, kl_weight=0.0)


class BaselineMethod(Method):
    """One network trained on plain cross-entropy (the paper's baseline)."""

    name = "baseline"
    summary = "one network, plain cross-entropy"
    term_names: ClassVar[tuple[str, ...]] = ("loss", "ce_branches")
    required_model = MappingProxyType({"num_branches": 1})

    def loss(self, outputs: Outputs, target: torch.Tensor,
             kl_weight: float | torch.Tensor) -> MethodLoss:
        loss = _cross_entropy_sum(outputs[0], target)
        return MethodLoss(loss, {"loss": loss.detach(), "ce_branches": loss.detach()})


class EnsembleMethod(Method):
    """m fully independent networks on cross-entropy, evaluated as one ensemble (m-Net).

    The ensemble averages the members' softmax probabilities.
    """

    name = "ensemble"
    summary = "m independent networks, an averaged-probability ensemble"
    term_names: ClassVar[tuple[str, ...]] = ("loss", "ce_branches")
    has_ensemble = True
    min_branches = 2
    required_model = INDEPENDENT_MEMBERS
    ensemble_output = "log_probabilities"

    def loss(self, outputs: Outputs, target: torch.Tensor,
             kl_weight: float | torch.Tensor) -> MethodLoss:
        loss = _cross_entropy_sum(outputs[0], target)
        return MethodLoss(loss, {"loss": loss.detach(), "ce_branches": loss.detach()})

    def ensemble_logits(self, outputs: Outputs) -> torch.Tensor:
        """log of the members' averaged softmax probabilities."""
        return averaged_probability_logits(outputs[0])
