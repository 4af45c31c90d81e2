"""cl_ilr_loss against the formulas of winycg/MCL-OKD's main_cifar_cl_ilr.py, in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from one_fast import cl_ilr_loss, kd_loss

from .mcl_okd_formulas import DistillKL

IGNORE = -100


def reference_code_loss(logits_list, target, T):
    """The training loss of main_cifar_cl_ilr.py's train(), on a list of (N, C) logits."""
    criterion_cls, criterion_div = nn.CrossEntropyLoss(), DistillKL(T)
    loss_cls = 0.0
    loss_div = 0.0
    for i in range(len(logits_list)):
        loss_cls = loss_cls + 0.5 * criterion_cls(logits_list[i], target)
    for i in range(len(logits_list)):
        ensemble_logits = 0.0
        for j in range(len(logits_list)):
            if i != j:
                ensemble_logits = ensemble_logits + logits_list[j]
        ensemble_logits = ensemble_logits / (len(logits_list) - 1)
        ensemble_logits = ensemble_logits.detach()
        loss_div = loss_div + 0.5 * criterion_div(logits_list[i], ensemble_logits)
    return loss_cls + loss_div


def _inputs(n=6, m=4, c=7, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    logits = (scale * torch.randn(n, m, c, generator=g, dtype=torch.float64)).requires_grad_()
    target = torch.randint(0, c, (n,), generator=g)
    return logits, target


@pytest.mark.parametrize("m", [2, 3, 4, 5])
@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_equals_the_reference_code_values_and_gradients(m, temperature):
    logits, target = _inputs(m=m, seed=m)
    ours = cl_ilr_loss(logits, target, temperature=temperature)
    (grad,) = torch.autograd.grad(ours, logits)
    ref_logits = logits.detach().clone().requires_grad_()
    ref = reference_code_loss(list(ref_logits.unbind(1)), target, temperature)
    (ref_grad,) = torch.autograd.grad(ref, ref_logits)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)


def test_float32_matches_float64_reference():
    logits, target = _inputs(n=32, m=4, c=100, scale=5.0)
    ours = cl_ilr_loss(logits.detach().float(), target)
    ref = reference_code_loss(list(logits.detach().unbind(1)), target, 2.0)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours.double(), ref, rtol=1e-5, atol=1e-6)


def test_gradcheck_float64():
    """With its targets detached, cl_ilr_loss is not the derivative of one function of the
    logits; its gradient is that of the frozen-target function
    F(z) = sum_i 0.5 * kd_loss(z_i, t_i, kd_weight=1) with t_i fixed at the point (KD with
    T^2 * KL, exactly CL-ILR's 0.5 CE + 0.5 T^2 KL per branch). Check F by gradcheck and
    cl_ilr_loss's values and gradients against F."""
    logits, target = _inputs(n=3, m=3, c=5)
    z0 = logits.detach()
    teachers = (z0.sum(1, keepdim=True) - z0) / 2  # t_i at the point, constants

    def frozen(z):
        return sum(0.5 * kd_loss(z[:, i], teachers[:, i], target, temperature=2.0)
                   for i in range(3))

    assert torch.autograd.gradcheck(frozen, (logits,))
    ours = cl_ilr_loss(logits, target)
    (grad,) = torch.autograd.grad(ours, logits)
    expected = frozen(logits)
    (expected_grad,) = torch.autograd.grad(expected, logits)
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-12)


def test_reductions_and_terms_add_up():
    logits, target = _inputs()
    rows = cl_ilr_loss(logits, target, reduction="none")
    assert rows.shape == (6,)
    torch.testing.assert_close(cl_ilr_loss(logits, target, reduction="sum"), rows.sum())
    t = cl_ilr_loss(logits, target, temperature=2.0, return_terms=True)
    torch.testing.assert_close(t.loss.detach(), 0.5 * t.ce_branches + 0.5 * 4.0 * t.kl)
    torch.testing.assert_close(t.ce_per_branch.sum(), t.ce_branches)
    assert t.kl_per_branch.shape == (4,)


def test_ignored_rows_are_skipped_and_not_counted():
    logits, target = _inputs(n=8)
    target = target.clone()
    target[[1, 5]] = IGNORE
    keep = target != IGNORE
    ours = cl_ilr_loss(logits, target)
    (grad,) = torch.autograd.grad(ours, logits)
    sub = logits.detach()[keep].clone().requires_grad_()
    ref = reference_code_loss(list(sub.unbind(1)), target[keep], 2.0)
    (ref_grad,) = torch.autograd.grad(ref, sub)
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(grad[keep], ref_grad)
    assert grad[~keep].abs().max() == 0
    all_ignored = torch.full_like(target, IGNORE)
    assert cl_ilr_loss(logits, all_ignored).item() == 0.0


def test_teacher_is_detached():
    """Branch i's KL sends no gradient into the others: with CE off (one class), only the
    student side of each KL moves, so the gradient equals the sum of per-branch KD gradients."""
    logits, target = _inputs(m=3)
    (grad,) = torch.autograd.grad(cl_ilr_loss(logits, target), logits)
    expected = torch.zeros_like(logits)
    for i in range(3):
        z = logits.detach().clone().requires_grad_()
        teacher = (z.detach().sum(1) - z.detach()[:, i]) / 2
        term = 0.5 * F.cross_entropy(z[:, i], target) + 0.5 * 4.0 * F.kl_div(
            F.log_softmax(z[:, i] / 2, 1), F.softmax(teacher / 2, 1), reduction="batchmean")
        (g,) = torch.autograd.grad(term, z)
        expected += g
    torch.testing.assert_close(grad, expected)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs_computed_in_float32(dtype):
    logits, target = _inputs()
    out = cl_ilr_loss(logits.detach().to(dtype), target)
    assert out.dtype == torch.float32
    ref = cl_ilr_loss(logits.detach().to(dtype).double(), target)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mutate, exc, match", [
    (lambda z, y: (z[:, :1], y), ValueError, "at least two branches"),
    (lambda z, y: (z[0], y), ValueError, r"logits must be a 3-D tensor"),
    (lambda z, y: (z.long(), y), TypeError, "floating"),
    (lambda z, y: (z, y[:3]), ValueError, "target must have N"),
    (lambda z, y: (z, y.float()), TypeError, "integer"),
    (lambda z, y: (z, torch.full_like(y, 7)), ValueError, r"target values must be in \[0, 7\)"),
])
def test_bad_tensors(mutate, exc, match):
    logits, target = _inputs()
    z, y = mutate(logits.detach(), target)
    with pytest.raises(exc, match=match):
        cl_ilr_loss(z, y)


@pytest.mark.parametrize("kwargs, match", [
    ({"temperature": 0.0}, "temperature"),
    ({"reduction": "max"}, "reduction"),
    ({"ignore_index": 1.5}, "ignore_index"),
])
def test_bad_options(kwargs, match):
    logits, target = _inputs()
    with pytest.raises((TypeError, ValueError), match=match):
        cl_ilr_loss(logits, target, **kwargs)
