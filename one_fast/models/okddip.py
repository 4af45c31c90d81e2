"""OKDDip's peers and leader (Chen et al. 2020, as winycg/MCL-OKD's ``okddip_resnet`` builds it).

A ONE-style network without a gate: stem and stages 1-2 shared, m branches each with its own
stage 3 and classifier. Branches 0..m-2 are the *peers*, branch m-1 the *leader*. Each peer i
learns from its own target x_i = sum_j a_ij z_j over the peers' logits, the attention
a = softmax_j(q_i . k_j) computed from the peers' pooled stage-3 features by two bias-free
linear maps (D -> D/8) that every peer shares.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .network import check_fixed_sharing
from .resnet import ONEResNet

# The query/key width is the feature width divided by this (that code's D // 8).
ATTENTION_REDUCTION = 8


class OKDDipResNet(ONEResNet):
    """OKDDip's CIFAR ResNet (``create_model("resnet", layout="okddip")``).

    ``forward(x)`` gives ``(logits (N, m, K), gate (N, m) = 1/m)`` like every one_fast network
    (evaluation, export and costs read those); with ``return_targets = True`` (set for
    training by ``OKDDipMethod.prepare_training``) it gives :meth:`forward_with_targets`'
    ``(logits, gate, peer_targets (N, m-1, K))``, the attention-weighted targets the OKDDip
    loss needs.

    The query and key maps exist for m >= 2 (m - 1 >= 1 peers); they belong to no branch, so
    an extracted member (a plain ResNet) leaves them out.

    Args:
        depth, num_classes, num_branches, block, batched: as :class:`ONEResNet`.
        shared_stages: must be 2 (stages 1-2 shared, as in that code).
        gate: must be False.
        share_stem: must be True.
    """

    # The sharing this layout is (the factory builds with it; methods require it).
    FIXED_SHARING: ClassVar[Mapping[str, object]] = MappingProxyType(
        {"shared_stages": 2, "gate": False, "share_stem": True})

    def __init__(self, depth: int = 32, num_classes: int = 100, num_branches: int = 4,
                 block: str = "basic", shared_stages: int = 2, gate: bool = False,
                 batched: bool = True, share_stem: bool = True) -> None:
        check_fixed_sharing("the OKDDip network shares stem and stages 1-2 and has no gate",
                            self.FIXED_SHARING, shared_stages=shared_stages, gate=gate,
                            share_stem=share_stem)
        super().__init__(depth=depth, num_classes=num_classes, num_branches=num_branches,
                         block=block, shared_stages=2, gate=False, batched=batched)
        width = self.classifier.weight.shape[2]
        self.query: nn.Linear | None = None
        self.key: nn.Linear | None = None
        if num_branches >= 2:
            self.query = nn.Linear(width, width // ATTENTION_REDUCTION, bias=False)
            self.key = nn.Linear(width, width // ATTENTION_REDUCTION, bias=False)
        self.return_targets = False

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.return_targets:
            return self.forward_with_targets(x)
        return super().forward(x)

    def forward_with_targets(self, x: torch.Tensor
                             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(logits (N, m, K), gate (N, m), peer_targets (N, m-1, K))``.

        peer_targets[:, i] = sum_j a_ij logits[:, j] over the peers j < m - 1, with
        a_i = softmax_j(q_i . k_j) (no scaling), q and k the shared linear maps of the peers'
        pooled features. Nothing is detached (that code's choice).
        """
        if self.query is None:
            raise ValueError("OKDDip needs m >= 2 branches (at least one peer and the leader)")
        shared = self.trunk(self.stem(x))
        features = self.pooled_features(shared)  # (N, m, D)
        logits = self.classify(features)
        peers = features.shape[1] - 1
        if self.batched:
            q, k = self.query(features[:, :peers]), self.key(features[:, :peers])  # (N, p, d)
        else:
            q = torch.stack([self.query(features[:, j]) for j in range(peers)], 1)
            k = torch.stack([self.key(features[:, j]) for j in range(peers)], 1)
        attention = F.softmax(torch.bmm(q, k.transpose(1, 2)), dim=-1)  # (N, p, p): a_ij
        targets = torch.bmm(attention.to(logits.dtype), logits[:, :peers])
        return logits, self._gate(shared), targets

    def tensor_owner(self, name: str) -> str:
        """As :class:`ONEResNet`; the query and key maps count as "gate": they mix branches and
        no extracted member keeps them."""
        if name.split(".", 1)[0] in ("query", "key"):
            return "gate"
        return super().tensor_owner(name)


__all__ = ["ATTENTION_REDUCTION", "OKDDipResNet"]
