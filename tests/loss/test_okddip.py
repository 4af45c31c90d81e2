"""okddip_loss against the formulas of winycg/MCL-OKD's main_cifar_okddip.py, in float64."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from one_fast import okddip_loss

from .mcl_okd_formulas import DistillKL

IGNORE = -100


def reference_code_loss(output_batch, x_m, x_stu, target, T, consistency_weight):
    """main_cifar_okddip.py's train() loss; output_batch and x_m are (N, C, m-1) as there."""
    criterion_cls, criterion_div = nn.CrossEntropyLoss(), DistillKL(T)
    loss_true = 0
    loss_group = 0
    for i in range(output_batch.shape[2]):
        loss_true += criterion_cls(output_batch[:, :, i], target)
        loss_group += criterion_div(output_batch[:, :, i], x_m[:, :, i])
    return loss_true + criterion_cls(x_stu, target) + consistency_weight * (
        loss_group + criterion_div(x_stu, torch.mean(output_batch, dim=2)))


def _inputs(n=6, peers=3, c=7, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)

    def draw(*shape):
        return (scale * torch.randn(*shape, generator=g, dtype=torch.float64)).requires_grad_()

    return draw(n, peers, c), draw(n, peers, c), draw(n, c), torch.randint(0, c, (n,),
                                                                            generator=g)


def _reference(z, x, lead, target, T, w):
    return reference_code_loss(z.transpose(1, 2), x.transpose(1, 2), lead, target, T, w)


@pytest.mark.parametrize("peers", [1, 2, 3, 4])
@pytest.mark.parametrize("temperature, weight", [(3.0, 1.0), (1.0, 0.3), (4.0, 0.0067)])
def test_equals_the_reference_code_values_and_gradients(peers, temperature, weight):
    z, x, lead, target = _inputs(peers=peers, seed=peers)
    ours = okddip_loss(z, x, lead, target, temperature=temperature, kl_weight=weight)
    grads = torch.autograd.grad(ours, (z, x, lead))
    ref = _reference(z, x, lead, target, temperature, weight)
    ref_grads = torch.autograd.grad(ref, (z, x, lead))
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_targets_are_not_detached():
    z, x, lead, target = _inputs()
    g_x, g_z = torch.autograd.grad(okddip_loss(z, x, lead, target), (x, z))
    assert g_x.abs().max() > 1e-3  # the peers' KL reaches their targets
    # The leader's KL reaches the peers through their mean: the peers' gradient differs from
    # the one without the leader's term.
    without = torch.autograd.grad(okddip_loss(z, x, lead.detach() * 0 + z.detach().mean(1),
                                              target), z)[0]
    assert (g_z - without).abs().max() > 1e-3


def test_float32_matches_float64_reference():
    z, x, lead, target = _inputs(n=32, peers=3, c=100, scale=5.0)
    ours = okddip_loss(z.detach().float(), x.detach().float(), lead.detach().float(), target)
    assert ours.dtype == torch.float32
    ref = _reference(z.detach(), x.detach(), lead.detach(), target, 3.0, 1.0)
    torch.testing.assert_close(ours.double(), ref, rtol=1e-5, atol=1e-5)


def test_gradcheck_float64():
    z, x, lead, target = _inputs(n=3, peers=2, c=5)
    assert torch.autograd.gradcheck(
        lambda a, b, c: okddip_loss(a, b, c, target, kl_weight=0.7, reduction="none"),
        (z, x, lead))


def test_reductions_terms_and_zero_weight():
    z, x, lead, target = _inputs()
    rows = okddip_loss(z, x, lead, target, reduction="none")
    torch.testing.assert_close(okddip_loss(z, x, lead, target, reduction="sum"), rows.sum())
    t = okddip_loss(z, x, lead, target, kl_weight=0.5, return_terms=True)
    torch.testing.assert_close(t.loss.detach(), t.ce_peers + t.ce_leader
                               + 0.5 * 9.0 * (t.kl_peers + t.kl_leader))
    off = okddip_loss(z, x, lead, target, kl_weight=0, return_terms=True)
    assert off.kl_peers.item() == 0 and off.kl_leader.item() == 0
    torch.testing.assert_close(off.loss.detach(), t.ce_peers + t.ce_leader)


def test_ignored_rows_are_skipped_and_not_counted():
    z, x, lead, target = _inputs(n=8)
    target = target.clone()
    target[[0, 6]] = IGNORE
    keep = target != IGNORE
    ours = okddip_loss(z, x, lead, target)
    grads = torch.autograd.grad(ours, (z, x, lead))
    subs = [t.detach()[keep].clone().requires_grad_() for t in (z, x, lead)]
    ref = _reference(*subs, target[keep], 3.0, 1.0)
    ref_grads = torch.autograd.grad(ref, subs)
    torch.testing.assert_close(ours, ref)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got[keep], want)
        assert got[~keep].abs().max() == 0
    assert okddip_loss(z, x, lead, torch.full_like(target, IGNORE)).item() == 0.0


@pytest.mark.parametrize("mutate, exc, match", [
    (lambda z, x, lead, y: (z[:, :0], x[:, :0], lead, y), ValueError, "at least one peer"),
    (lambda z, x, lead, y: (z, x[:, :2], lead, y), ValueError, "peer_targets must have the"),
    (lambda z, x, lead, y: (z, x, lead[:, :3], y), ValueError, "leader_logits must have"),
    (lambda z, x, lead, y: (z, x, lead[0], y), ValueError, "leader_logits must be a 2-D"),
    (lambda z, x, lead, y: (z[0], x, lead, y), ValueError, "peer_logits must be a 3-D"),
    (lambda z, x, lead, y: (z, x, lead, y[:2]), ValueError, "target must have N"),
    (lambda z, x, lead, y: (z, x.long(), lead, y), TypeError, "floating"),
    (lambda z, x, lead, y: (z, x, lead, y + 7), ValueError, "target values"),
])
def test_bad_tensors(mutate, exc, match):
    args = [t.detach() if t.is_floating_point() else t for t in _inputs()]
    with pytest.raises(exc, match=match):
        okddip_loss(*mutate(*args))


@pytest.mark.parametrize("kwargs, match", [
    ({"temperature": -1.0}, "temperature"),
    ({"kl_weight": -0.5}, "kl_weight"),
    ({"reduction": "avg"}, "reduction"),
])
def test_bad_options(kwargs, match):
    z, x, lead, target = _inputs()
    with pytest.raises((TypeError, ValueError), match=match):
        okddip_loss(z, x, lead, target, **kwargs)
