"""ONE: branches distilled online from their gated ensemble (Lan et al. 2018)."""

from __future__ import annotations

from typing import ClassVar

import torch

from ..loss import one_loss
from .base import Method, MethodLoss, Outputs


class ONEMethod(Method):
    """One network with m branches distilled from their gated ensemble (ONE).

    Args:
        temperature: T of the KL terms.
        detach_teacher: stop the KL gradient at the ensemble teacher (the authors' choice).
        backend: the ``one_loss`` backend ("auto", "reference", "triton", "native").
        distill: False for the "no online distillation" ablation (``--kl-weight 0``): the loss
            gets the number 0 as its KL weight. one_loss's fused backends form the KL terms in
            the same pass over the logits as the cross-entropies, so they still cost that pass.
    """

    name = "one"
    summary = "one network, m branches distilled from their gated ensemble"
    term_names: ClassVar[tuple[str, ...]] = ("loss", "ce_branches", "ce_ensemble", "kl")
    has_ensemble = True
    uses_gate = True

    def __init__(self, temperature: float = 3.0, detach_teacher: bool = True,
                 backend: str = "auto", distill: bool = True) -> None:
        self.temperature = temperature
        self.detach_teacher = detach_teacher
        self.backend = backend
        self.distill = distill

    def loss(self, outputs: Outputs, target: torch.Tensor,
             kl_weight: float | torch.Tensor) -> MethodLoss:
        logits, gate = outputs[0], outputs[1]
        t = one_loss(logits, gate, target, temperature=self.temperature,
                     kl_weight=kl_weight if self.distill else 0.0,
                     detach_teacher=self.detach_teacher, backend=self.backend,
                     return_terms=True)
        return MethodLoss(t.loss, {"loss": t.loss.detach(), "ce_branches": t.ce_branches,
                                   "ce_ensemble": t.ce_ensemble, "kl": t.kl})

    def ensemble_logits(self, outputs: Outputs) -> torch.Tensor:
        """ONE-E: the gated ensemble z_e = sum_i g_i z_i, the teacher the loss distils from."""
        logits, gate = outputs[0], outputs[1]
        return torch.einsum("nm,nmc->nc", gate.float(), logits.float())

    def __repr__(self) -> str:
        return (f"ONEMethod(temperature={self.temperature}, detach_teacher="
                f"{self.detach_teacher}, backend={self.backend!r}, distill={self.distill})")
