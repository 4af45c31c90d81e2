"""ONE: branches distilled online from their gated ensemble (Lan et al. 2018)."""

from __future__ import annotations

from typing import ClassVar

import torch

from ..loss import dml_loss, one_loss
from ..loss.reference import compute_dtype
from .base import Method, MethodLoss, Outputs


class ONEMethod(Method):
    """One network with m branches distilled from their gated ensemble (ONE).

    Args:
        temperature: T of the KL terms.
        detach_teacher: stop the KL gradient at the ensemble teacher (the authors' choice).
        backend: the ``one_loss`` backend ("auto", "reference", "triton", "native").
        distill: False for the "no online distillation" ablation (``--kl-weight 0``): the loss
            is sum_i CE(z_i, y) + CE(z_e, y), computed as cross-entropies alone -- no softened
            softmax or KL term is formed (one_loss, whose fused backends form the KL terms in the
            same pass as the cross-entropies, is not called).
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
        if not self.distill:
            return self._cross_entropies(logits, gate, target)
        t = one_loss(logits, gate, target, temperature=self.temperature,
                     kl_weight=kl_weight,
                     detach_teacher=self.detach_teacher, backend=self.backend,
                     return_terms=True)
        return MethodLoss(t.loss, {"loss": t.loss.detach(), "ce_branches": t.ce_branches,
                                   "ce_ensemble": t.ce_ensemble, "kl": t.kl})

    def check(self, **model: object) -> None:
        """As :meth:`Method.check`; one branch is refused: ONE with m = 1 would train on twice
        the cross-entropy of a plain network, which is ``--method baseline``."""
        if model.get("num_branches") == 1:
            raise ValueError("--method one needs --num-branches >= 2 (m branches distilled "
                             "from their gated ensemble); one network on plain cross-entropy "
                             "is --method baseline")
        super().check(**model)

    def _cross_entropies(self, logits: torch.Tensor, gate: torch.Tensor,
                         target: torch.Tensor) -> MethodLoss:
        """sum_i CE(z_i, y) + CE(z_e, y), mean over rows, with no KL term computed.

        dml_loss with the number 0 as its weight is the (float32-accumulating, ignore_index-
        aware) sum of cross-entropies over its members; the gated ensemble is a one-member call.
        """
        ce_branches = dml_loss(logits, target, kl_weight=0.0)
        dtype = compute_dtype(logits.dtype)  # float32 for bf16/fp16 logits, as one_loss
        ensemble = torch.einsum("nm,nmc->nc", gate.to(dtype), logits.to(dtype))
        ce_ensemble = dml_loss(ensemble[:, None], target, kl_weight=0.0)
        loss = ce_branches + ce_ensemble
        return MethodLoss(loss, {"loss": loss.detach(), "ce_branches": ce_branches.detach(),
                                 "ce_ensemble": ce_ensemble.detach(),
                                 "kl": torch.zeros((), device=loss.device)})

    def ensemble_logits(self, outputs: Outputs) -> torch.Tensor:
        """ONE-E: the gated ensemble z_e = sum_i g_i z_i, the teacher the loss distils from."""
        logits, gate = outputs[0], outputs[1]
        return torch.einsum("nm,nmc->nc", gate.float(), logits.float())

    def __repr__(self) -> str:
        return (f"ONEMethod(temperature={self.temperature}, detach_teacher="
                f"{self.detach_teacher}, backend={self.backend!r}, distill={self.distill})")
