"""The reference ONE loss against an independent float64 formulation, plus gradcheck."""

from __future__ import annotations

import itertools

import pytest
import torch

from one_fast import ONELoss, one_loss
from tests.loss.independent import independent_one_loss


def make_inputs(n, m, c, *, dtype=torch.float32, ignore=(), seed=0, scale=3.0):
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, m, c, generator=gen, dtype=torch.float64) * scale).to(dtype)
    gate = torch.softmax(torch.randn(n, m, generator=gen, dtype=torch.float64), 1).to(dtype)
    target = torch.randint(0, c, (n,), generator=gen)
    for r in ignore:
        target[r] = -100
    return logits.requires_grad_(), gate.requires_grad_(), target


CASES = list(itertools.product(
    ["mean", "sum", "none"], [True, False], [1.0, 3.0, 4.5], [0.0, 0.3, 1.0]))


@pytest.mark.parametrize("reduction,detach,temperature,kl_weight", CASES)
def test_matches_independent_formulation(reduction, detach, temperature, kl_weight):
    logits, gate, target = make_inputs(7, 3, 11, dtype=torch.float64, ignore=(2, 5))
    kwargs = dict(temperature=temperature, kl_weight=kl_weight, detach_teacher=detach,
                  reduction=reduction)
    got = one_loss(logits, gate, target, backend="reference", return_terms=True, **kwargs)
    want, want_terms = independent_one_loss(logits, gate, target, temperature, kl_weight, detach,
                                            -100, reduction)
    torch.testing.assert_close(got.loss, want, rtol=1e-12, atol=1e-12)
    weights = torch.randn_like(want)  # a random cotangent checks the whole Jacobian row space
    g_got = torch.autograd.grad((got.loss * weights).sum(), (logits, gate))
    g_want = torch.autograd.grad((want * weights).sum(), (logits, gate))
    for a, b in zip(g_got, g_want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    if reduction == "none":
        torch.testing.assert_close(got.ce_per_branch, want_terms["ce"])
        torch.testing.assert_close(got.ce_ensemble, want_terms["ce_e"])
        torch.testing.assert_close(got.kl_per_branch, want_terms["kl"])


def test_terms_add_up_to_loss():
    logits, gate, target = make_inputs(9, 4, 13, ignore=(0,))
    t = one_loss(logits, gate, target, temperature=3.0, kl_weight=0.7, return_terms=True)
    torch.testing.assert_close(t.loss, t.ce_branches + t.ce_ensemble + 0.7 * 9.0 * t.kl)
    torch.testing.assert_close(t.ce_branches, t.ce_per_branch.sum())
    torch.testing.assert_close(t.kl, t.kl_per_branch.sum())
    assert t.ce_per_branch.shape == (4,) and not t.ce_branches.requires_grad


def test_detach_changes_only_kl_gradient_into_teacher():
    logits, gate, target = make_inputs(5, 3, 7, dtype=torch.float64)
    g_detached = torch.autograd.grad(one_loss(logits, gate, target, detach_teacher=True), gate)[0]
    g_free = torch.autograd.grad(one_loss(logits, gate, target, detach_teacher=False), gate)[0]
    assert not torch.allclose(g_detached, g_free)
    g_no_kl = torch.autograd.grad(one_loss(logits, gate, target, kl_weight=0.0), gate)[0]
    torch.testing.assert_close(g_detached, g_no_kl)  # with a detached teacher KL never hits g


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_gradcheck_float64(reduction):
    # Only the undetached loss is a function whose derivative autograd should return: with
    # detach_teacher=True the gradient deliberately omits the teacher's KL path (checked above
    # against the independent formulation instead).
    logits, gate, target = make_inputs(4, 3, 6, dtype=torch.float64, ignore=(1,))

    def fn(z, g):
        return one_loss(z, g, target, temperature=2.5, kl_weight=0.8, detach_teacher=False,
                        reduction=reduction)

    assert torch.autograd.gradcheck(fn, (logits, gate))


def test_all_rows_ignored_gives_zero_loss_and_gradients():
    logits, gate, target = make_inputs(3, 2, 5, ignore=(0, 1, 2))
    for reduction in ("mean", "sum"):
        loss = one_loss(logits, gate, target, reduction=reduction)
        assert loss.item() == 0.0
        gl, gg = torch.autograd.grad(loss, (logits, gate))
        assert torch.equal(gl, torch.zeros_like(gl)) and torch.equal(gg, torch.zeros_like(gg))
    rows = one_loss(logits, gate, target, reduction="none")
    assert torch.equal(rows, torch.zeros(3))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs_computed_in_float32(dtype):
    logits, gate, target = make_inputs(6, 3, 10, dtype=dtype)
    loss = one_loss(logits, gate, target)
    assert loss.dtype == torch.float32
    want = one_loss(logits.detach().float(), gate.detach().float(), target)
    torch.testing.assert_close(loss, want)  # same float32 math on the same (rounded) values
    gl, gg = torch.autograd.grad(loss, (logits, gate))
    assert gl.dtype == dtype and gg.dtype == dtype


def test_nan_in_logits_propagates():
    logits, gate, target = make_inputs(4, 2, 5)
    with torch.no_grad():
        logits[1, 0, 2] = float("nan")
    rows = one_loss(logits, gate, target, reduction="none")
    assert torch.isnan(rows[1]) and torch.isfinite(rows[[0, 2, 3]]).all()
    assert torch.isnan(one_loss(logits, gate, target))


def test_module_matches_function_and_accepts_tensor_kl_weight():
    logits, gate, target = make_inputs(8, 3, 9)
    crit = ONELoss(temperature=4.0, detach_teacher=False, reduction="sum")
    got = crit(logits, gate, target, kl_weight=torch.tensor(0.25))
    want = one_loss(logits, gate, target, temperature=4.0, kl_weight=0.25, detach_teacher=False,
                    reduction="sum")
    torch.testing.assert_close(got, want)
    assert "temperature=4.0" in repr(crit)
