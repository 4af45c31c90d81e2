"""Online knowledge distillation with diverse peers: ``okddip_loss``.

The loss of Chen et al., "Online Knowledge Distillation with Diverse Peers" (AAAI 2020), as the
public code that compares the online-distillation methods under one protocol (winycg/MCL-OKD,
``main_cifar_okddip.py``) trains it. m - 1 peers with logits z_1..z_{m-1}, each with its own
attention-weighted target x_i (the network computes x_i = sum_j a_ij z_j), and one leader with
logits z_l; for a row with label y and temperature T::

    L = sum_i CE(z_i, y) + CE(z_l, y)
        + w * T^2 * [ sum_i KL(softmax(x_i/T) || softmax(z_i/T))
                      + KL(softmax(mean_i z_i / T) || softmax(z_l/T)) ]

That code does **not** detach the targets: the peers' KL terms send gradient into x_i (so into
the attention and every peer it weights), and the leader's into the peers through their mean.
This loss does the same. Plain PyTorch, computed in float32 whatever the input dtype (float64
stays float64, for gradchecks).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from .cross_entropy import cross_entropy_rows
from .kd_reference import is_zero_weight, soft_kl
from .reference import compute_dtype
from .terms import reduce_rows
from .validation import check_floating, check_options, check_target, check_target_values, describe


class OKDDipLossTerms(NamedTuple):
    """The OKDDip loss and its parts, reduced like the loss ("mean", "sum" or per row).

    ``loss = ce_peers + ce_leader + kl_weight * T**2 * (kl_peers + kl_leader)``. Only ``loss``
    is differentiable.

    Attributes:
        loss: the training loss (what ``okddip_loss`` returns).
        ce_peers: sum over peers of CE(z_i, y).
        ce_leader: CE(z_l, y).
        kl_peers: sum over peers of KL(softmax(x_i/T) || softmax(z_i/T)), unweighted (0 when
            ``kl_weight`` is the number 0: not computed).
        kl_leader: KL(softmax(mean_i z_i/T) || softmax(z_l/T)), unweighted.
    """

    loss: torch.Tensor
    ce_peers: torch.Tensor
    ce_leader: torch.Tensor
    kl_peers: torch.Tensor
    kl_leader: torch.Tensor


def validate_okddip_loss_args(peer_logits, peer_targets, leader_logits, target, temperature,
                              kl_weight, ignore_index, reduction) -> None:
    """Raise ``ValueError``/``TypeError`` naming the offending argument.

    ``peer_logits`` and ``peer_targets`` (N, m-1, C) with m - 1 >= 1, ``leader_logits`` (N, C),
    ``target`` (N,) integer (values checked in eager mode only).
    """
    check_floating(peer_logits, "peer_logits", "(N, m-1, C)")
    n, peers, c = peer_logits.shape
    if peers < 1:
        raise ValueError(f"peer_logits must hold at least one peer (dim 1), got "
                         f"{describe(peer_logits)}")
    if c < 1:
        raise ValueError(f"peer_logits must have at least one class (dim 2), got "
                         f"{describe(peer_logits)}")
    check_floating(peer_targets, "peer_targets", "(N, m-1, C)")
    if peer_targets.shape != peer_logits.shape:
        raise ValueError(f"peer_targets must have the shape of peer_logits "
                         f"{tuple(peer_logits.shape)}, got {tuple(peer_targets.shape)}")
    check_floating(leader_logits, "leader_logits", "(N, C)")
    if tuple(leader_logits.shape) != (n, c):
        raise ValueError(f"leader_logits must have shape (N, C) = {(n, c)}, got "
                         f"{tuple(leader_logits.shape)}")
    check_target(target, n, "peer_logits")
    devices = {t.device for t in (peer_logits, peer_targets, leader_logits, target)}
    if len(devices) > 1:
        raise ValueError(f"peer_logits, peer_targets, leader_logits and target must be on one "
                         f"device, got {sorted(map(str, devices))}")
    check_options(temperature, "kl_weight", kl_weight, ignore_index, reduction)
    check_target_values(target, c, ignore_index)


def okddip_loss(
    peer_logits: torch.Tensor,
    peer_targets: torch.Tensor,
    leader_logits: torch.Tensor,
    target: torch.Tensor,
    *,
    temperature: float = 3.0,
    kl_weight: float | torch.Tensor = 1.0,
    ignore_index: int = -100,
    reduction: str = "mean",
    return_terms: bool = False,
) -> torch.Tensor | OKDDipLossTerms:
    """The OKDDip loss (Chen et al. 2020, as winycg/MCL-OKD trains it).

    For each row n whose target is not ``ignore_index``::

        L_n = sum_i CE(z_i, y) + CE(z_l, y)
              + kl_weight * T^2 * [ sum_i KL(softmax(x_i/T) || softmax(z_i/T))
                                    + KL(softmax(mean_i z_i/T) || softmax(z_l/T)) ]

    No target is detached (that code's choice): gradient flows into ``peer_targets`` and, through
    the leader's target, into ``peer_logits``. Detach them yourself for the other variant. With
    "mean" each term is the batch mean that code's ``CrossEntropyLoss`` and
    ``kl_div(..., reduction="batchmean")`` compute (over the non-ignored rows here); with
    ``kl_weight`` the Python number 0 the KL terms are not computed.

    Args:
        peer_logits: (N, m-1, C) the peers' logits z_i.
        peer_targets: (N, m-1, C) each peer's attention-weighted target x_i.
        leader_logits: (N, C) the leader's logits z_l.
        target: (N,) integer labels in [0, C), or ``ignore_index``.
        temperature: T > 0 of the softened distributions (that code's ``--kd_T``, 3).
        kl_weight: w, the weight of the KL terms (that code ramps it up over 80 epochs); a
            number or a 1-element tensor.
        ignore_index: rows with this target contribute 0 and are not counted by "mean".
        reduction: "mean" (over non-ignored rows; 0 rows give 0), "sum", or "none" (per row).
        return_terms: also return the loss parts for logging.

    Returns:
        The float32 loss (float64 for float64 input), or an :class:`OKDDipLossTerms`.
    """
    validate_okddip_loss_args(peer_logits, peer_targets, leader_logits, target, temperature,
                              kl_weight, ignore_index, reduction)
    dtype = compute_dtype(peer_logits.dtype)
    z, x, leader = peer_logits.to(dtype), peer_targets.to(dtype), leader_logits.to(dtype)
    n, peers, _ = z.shape
    valid = target != ignore_index
    safe_target = torch.where(valid, target, torch.zeros_like(target)).long()
    zero = z.new_zeros(())
    ce_peers = torch.where(valid, cross_entropy_rows(
        z, safe_target[:, None].expand(n, peers)).sum(1), zero)
    ce_leader = torch.where(valid, cross_entropy_rows(leader, safe_target), zero)
    rows = ce_peers + ce_leader
    if is_zero_weight(kl_weight):
        kl_peers = kl_leader = torch.zeros_like(rows)
    else:
        def log_q(v: torch.Tensor) -> torch.Tensor:
            return F.log_softmax(v / temperature, dim=-1)

        kl_peers = torch.where(valid, soft_kl(log_q(x), log_q(z)).sum(1), zero)
        kl_leader = torch.where(valid, soft_kl(log_q(z.mean(1)), log_q(leader)), zero)
        rows = rows + (kl_weight * temperature**2) * (kl_peers + kl_leader)
    terms = OKDDipLossTerms(*(reduce_rows(t, valid, reduction) for t in (
        rows, ce_peers.detach(), ce_leader.detach(), kl_peers.detach(), kl_leader.detach())))
    return terms if return_terms else terms.loss


__all__ = ["OKDDipLossTerms", "okddip_loss"]
