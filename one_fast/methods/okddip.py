"""OKDDip: peers distilled from attention-weighted peer ensembles, a leader from the peers'
mean (Chen et al. 2020)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from ..loss import okddip_loss
from ..models.factory import LAYOUT_SHARING
from .base import Method, MethodLoss, Outputs


class OKDDipMethod(Method):
    """Online distillation with diverse peers, as winycg/MCL-OKD runs it.

    The network is ``layout="okddip"``: stem and stages 1-2 shared, m branches; branches
    0..m-2 are peers, branch m-1 the leader. In training the network also returns each peer's
    attention-weighted target (:meth:`prepare_training` switches that on); the loss is
    :func:`~one_fast.loss.okddip.okddip_loss` with ``--kl-weight`` ramped up over
    ``--rampup`` epochs (that code: 80). Targets are not detached, as in that code. The student
    is the leader (branch m-1); the ensemble the mean of all m branches' logits (that code's
    ``test()`` sums them: the same prediction).

    Args:
        temperature: T of the KL terms (that code's 3).
        distill: False drops the KL terms (``--kl-weight 0``).
    """

    name = "okddip"
    summary = "m-1 peers distilled from attention-weighted peer ensembles, a leader from their " \
              "mean"
    term_names: ClassVar[tuple[str, ...]] = ("loss", "ce_branches", "kl")
    has_ensemble = True
    min_branches = 2
    layout = "okddip"
    required_model = LAYOUT_SHARING[layout]

    def __init__(self, temperature: float = 3.0, distill: bool = True) -> None:
        self.temperature = temperature
        self.distill = distill

    def loss(self, outputs: Outputs, target: torch.Tensor,
             kl_weight: float | torch.Tensor) -> MethodLoss:
        if len(outputs) < 3:
            raise ValueError("method okddip needs the peers' targets after (logits, gate): "
                             "train a network built with layout 'okddip' after "
                             "OKDDipMethod.prepare_training(model)")
        logits, targets = outputs[0], outputs[2]
        t = okddip_loss(logits[:, :-1], targets, logits[:, -1], target,
                        temperature=self.temperature,
                        kl_weight=kl_weight if self.distill else 0.0, return_terms=True)
        return MethodLoss(t.loss, {"loss": t.loss.detach(),
                                   "ce_branches": t.ce_peers + t.ce_leader,
                                   "kl": t.kl_peers + t.kl_leader})

    def ensemble_logits(self, outputs: Outputs) -> torch.Tensor:
        """The mean of all m branches' logits (peers and leader)."""
        return outputs[0].float().mean(1)

    def student_branch(self, num_branches: int) -> int:
        """The leader, the last branch."""
        return num_branches - 1

    def standin_outputs(self, logits: torch.Tensor, gate: torch.Tensor) -> tuple:
        """The peers' own logits stand in for their targets (the attention's few FLOPs, two
        D x D/8 maps and an (m-1) x (m-1) mixing per image, are not counted)."""
        return logits, gate, logits[:, :-1]

    @staticmethod
    def prepare_training(model: nn.Module) -> None:
        """Make the OKDDip network's forward also return the peers' targets."""
        if not hasattr(model, "return_targets"):
            raise ValueError("method okddip trains a network built with layout 'okddip'")
        model.return_targets = True

    def __repr__(self) -> str:
        return f"OKDDipMethod(temperature={self.temperature}, distill={self.distill})"
