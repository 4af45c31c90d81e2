"""kd_loss against an independent float64 formulation, plus gradcheck, detach and bad input."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from one_fast import KDLoss, kd_loss
from one_fast.loss import kd_reference

IGNORE = -100


def _lse(v):
    top = v.max()
    return top + torch.log(torch.exp(v - top).sum())


def independent_kd(logits, teacher, target, temperature, kd_weight, reduction):
    """Float64, one row at a time with explicit log-sum-exp sums; returns (loss, ce, kl) rows."""
    z_all, t_all = logits.double(), teacher.detach().double()
    rows, ces, kls = [], [], []
    for r in range(z_all.shape[0]):
        y = int(target[r])
        if y == IGNORE:
            rows.append(z_all[r].sum() * 0.0)
            ces.append(z_all.new_zeros(()))
            kls.append(z_all.new_zeros(()))
            continue
        z, t = z_all[r], t_all[r]
        ce = _lse(z) - z[y]
        log_qt = t / temperature - _lse(t / temperature)
        log_qs = z / temperature - _lse(z / temperature)
        kl = (torch.exp(log_qt) * (log_qt - log_qs)).sum()
        rows.append(ce + kd_weight * temperature * temperature * kl)
        ces.append(ce.detach())
        kls.append(kl.detach())
    per_row = torch.stack(rows)
    count = sum(int(t) != IGNORE for t in target)
    loss = {"none": per_row, "sum": per_row.sum(),
            "mean": per_row.sum() / max(count, 1)}[reduction]
    return loss, torch.stack(ces), torch.stack(kls)


def make_inputs(n, c, *, dtype=torch.float64, ignore=(), seed=0, scale=3.0):
    gen = torch.Generator().manual_seed(seed)
    z = (torch.randn(n, c, generator=gen, dtype=torch.float64) * scale).to(dtype)
    t = (torch.randn(n, c, generator=gen, dtype=torch.float64) * scale).to(dtype)
    target = torch.randint(0, c, (n,), generator=gen)
    for r in ignore:
        target[r] = IGNORE
    return z.requires_grad_(), t.requires_grad_(), target


@pytest.mark.parametrize("reduction,temperature,kd_weight", list(itertools.product(
    ["mean", "sum", "none"], [1.0, 4.0, 0.7], [0.0, 0.5, 1.0])))
def test_matches_independent_formulation(reduction, temperature, kd_weight):
    z, t, target = make_inputs(7, 11, ignore=(2, 5))
    got = kd_loss(z, t, target, temperature=temperature, kd_weight=kd_weight,
                  reduction=reduction, return_terms=True)
    want, want_ce, want_kl = independent_kd(z, t, target, temperature, kd_weight, reduction)
    torch.testing.assert_close(got.loss, want, rtol=1e-12, atol=1e-12)
    weights = torch.randn_like(want)
    g_got = torch.autograd.grad((got.loss * weights).sum(), z)[0]
    g_want = torch.autograd.grad((want * weights).sum(), z)[0]
    torch.testing.assert_close(g_got, g_want, rtol=1e-10, atol=1e-12)
    if reduction == "none":
        torch.testing.assert_close(got.ce, want_ce, rtol=1e-12, atol=1e-12)
        if kd_weight != 0:
            torch.testing.assert_close(got.kl, want_kl, rtol=1e-12, atol=1e-12)


def test_no_gradient_reaches_teacher():
    z, t, target = make_inputs(5, 6)
    loss = kd_loss(z, t, target, kd_weight=torch.tensor(2.0))
    assert loss.grad_fn is not None
    assert torch.autograd.grad(loss, t, allow_unused=True)[0] is None
    # The same through the module, with a teacher whose logits come out of a differentiable op.
    teacher_params = torch.randn(6, dtype=torch.float64, requires_grad=True)
    KDLoss()(z, t.detach() + teacher_params, target).backward()
    assert teacher_params.grad is None and z.grad is not None


def test_terms_add_up_to_loss():
    z, t, target = make_inputs(9, 13, dtype=torch.float32, ignore=(0,))
    terms = kd_loss(z, t, target, temperature=3.0, kd_weight=0.7, return_terms=True)
    torch.testing.assert_close(terms.loss, terms.ce + 0.7 * 9.0 * terms.kl)
    assert terms.loss.dtype == torch.float32 and not terms.kl.requires_grad


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_gradcheck_float64(reduction):
    z, t, target = make_inputs(4, 6, ignore=(1,))
    assert torch.autograd.gradcheck(
        lambda zz: kd_loss(zz, t, target, temperature=2.5, kd_weight=0.8, reduction=reduction),
        (z,))


def test_kl_not_computed_for_python_zero_weight(monkeypatch):
    z, t, target = make_inputs(4, 5)

    def refuse(*args):
        raise AssertionError("KL computed although kd_weight is 0")

    monkeypatch.setattr(kd_reference, "soft_kl", refuse)
    terms = kd_loss(z, t, target, kd_weight=0.0, return_terms=True)
    assert torch.equal(terms.kl, torch.zeros(()).double())
    torch.testing.assert_close(terms.loss, torch.nn.functional.cross_entropy(z, target))
    with pytest.raises(AssertionError, match="KL computed"):
        kd_loss(z, t, target, kd_weight=torch.tensor(0.0))  # a tensor is never assumed zero


def test_all_rows_ignored_and_empty_batch_give_zero():
    z, t, target = make_inputs(3, 5, dtype=torch.float32, ignore=(0, 1, 2))
    for reduction in ("mean", "sum"):
        loss = kd_loss(z, t, target, reduction=reduction)
        assert loss.item() == 0.0
        assert torch.equal(torch.autograd.grad(loss, z)[0], torch.zeros_like(z))
    assert torch.equal(kd_loss(z, t, target, reduction="none"), torch.zeros(3))
    empty = torch.zeros(0, 5)
    assert kd_loss(empty, empty, torch.zeros(0, dtype=torch.long)).item() == 0.0


def test_one_class_gives_zero_loss_and_gradient():
    z, t, target = make_inputs(4, 1)
    loss = kd_loss(z, t, target)
    assert loss.item() == 0.0
    assert torch.equal(torch.autograd.grad(loss, z)[0], torch.zeros_like(z))


def test_large_logits_stay_finite_and_accurate():
    z, t, target = make_inputs(6, 9, dtype=torch.float32, scale=1e4)
    got = kd_loss(z, t, target, temperature=4.0, reduction="none")
    want, _, _ = independent_kd(z, t, target, 4.0, 1.0, "none")
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=0)
    g = torch.autograd.grad(got.sum(), z)[0]
    g_want = torch.autograd.grad(want.sum(), z)[0]  # float64 math, returned in z's float32
    torch.testing.assert_close(g, g_want, rtol=1e-5, atol=1e-5 * float(g_want.abs().max()))


def test_confident_row_keeps_true_class_gradient():
    # The true class 20 logits ahead: 1 - p_y ~ 4e-9, below float32's resolution near 1, so
    # p_y - 1 computed as a difference is 0 while expm1(log p_y) keeps it.
    z = torch.tensor([[20.0, 0.0, 0.0, -3.0]], requires_grad=True)
    target = torch.tensor([0])
    g = torch.autograd.grad(kd_loss(z, z.detach(), target, kd_weight=0.0), z)[0]
    z64 = z.detach().double()
    want = torch.softmax(z64, -1)
    want[0, 0] = -(want[0, 1:].sum())
    torch.testing.assert_close(g.double(), want, rtol=1e-5, atol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs_computed_in_float32(dtype):
    z, t, target = make_inputs(6, 10, dtype=dtype)
    loss = kd_loss(z, t, target)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, kd_loss(z.detach().float(), t.detach().float(), target))
    assert torch.autograd.grad(loss, z)[0].dtype == dtype


def test_module_matches_function():
    z, t, target = make_inputs(8, 9, dtype=torch.float32)
    crit = KDLoss(temperature=2.0, reduction="sum")
    got = crit(z, t, target, kd_weight=torch.tensor(0.25))
    torch.testing.assert_close(got, kd_loss(z, t, target, temperature=2.0, kd_weight=0.25,
                                            reduction="sum"))
    assert "temperature=2.0" in repr(crit)


def _good():
    return torch.randn(4, 5), torch.randn(4, 5), torch.randint(0, 5, (4,))


@pytest.mark.parametrize("mutate,exc,match", [
    (lambda z, t, y: (z[0], t, y), ValueError, "logits must be a 2-D"),
    (lambda z, t, y: (z[:, None], t, y), ValueError, "logits must be a 2-D"),
    (lambda z, t, y: (z.long(), t, y), TypeError, "logits must be floating"),
    (lambda z, t, y: (z, t[:, :4], y), ValueError, "teacher_logits must have the shape"),
    (lambda z, t, y: (z, t[:3], y), ValueError, "teacher_logits must have the shape"),
    (lambda z, t, y: (z, t.long(), y), TypeError, "teacher_logits must be floating"),
    (lambda z, t, y: (z, t, y[:3]), ValueError, "target must have N = 4"),
    (lambda z, t, y: (z, t, y.float()), TypeError, "target must hold integer"),
    (lambda z, t, y: (z, t, torch.tensor([0, 1, 5, 2])), ValueError, r"target values .*found 5"),
    (lambda z, t, y: (z, t, torch.tensor([0, -1, 2, 2])), ValueError, r"target .*found -1"),
    (lambda z, t, y: (z[:, :0], t[:, :0], y), ValueError, "at least one class"),
])
def test_bad_tensors(mutate, exc, match):
    with pytest.raises(exc, match=match):
        kd_loss(*mutate(*_good()))


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(temperature=0.0), ValueError, "temperature must be finite and > 0"),
    (dict(temperature=-2.0), ValueError, "temperature"),
    (dict(temperature=float("nan")), ValueError, "temperature"),
    (dict(temperature=torch.tensor(4.0)), TypeError, "temperature must be a Python number"),
    (dict(kd_weight=float("inf")), ValueError, "kd_weight must be finite and >= 0"),
    (dict(kd_weight=torch.ones(3)), ValueError, "kd_weight must be a number or a 1-element"),
    (dict(reduction="avg"), ValueError, "reduction must be one of"),
    (dict(ignore_index=1.5), TypeError, "ignore_index must be an int"),
])
def test_bad_options(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        kd_loss(*_good(), **kwargs)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 8), c=st.integers(1, 12), temperature=st.floats(0.5, 6.0),
       kd_weight=st.floats(0.0, 2.0), reduction=st.sampled_from(["mean", "sum", "none"]),
       seed=st.integers(0, 2**16))
def test_random_shapes_and_options(n, c, temperature, kd_weight, reduction, seed):
    z, t, target = make_inputs(n, c, seed=seed)
    target[::3] = IGNORE
    got = kd_loss(z, t, target, temperature=temperature, kd_weight=kd_weight, reduction=reduction)
    want, _, _ = independent_kd(z, t, target, temperature, kd_weight, reduction)
    torch.testing.assert_close(got, want, rtol=1e-11, atol=1e-12)
    torch.testing.assert_close(torch.autograd.grad(got.sum(), z)[0],
                               torch.autograd.grad(want.sum(), z)[0], rtol=1e-9, atol=1e-12)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_matches_float64_formulation(dtype):
    """On CUDA, against the float64 formulation of the same (rounded) inputs."""
    z, t, target = make_inputs(257, 100, dtype=dtype)
    target[::7] = IGNORE
    zc = z.detach().cuda().requires_grad_()
    got = kd_loss(zc, t.detach().cuda(), target.cuda(), temperature=4.0, reduction="none")
    z64 = z.detach().double().requires_grad_()
    want, _, _ = independent_kd(z64, t, target, 4.0, 1.0, "none")
    torch.testing.assert_close(got.double().cpu(), want, rtol=1e-5, atol=1e-5)
    g = torch.autograd.grad(got.sum(), zc)[0].double().cpu()
    g_want = torch.autograd.grad(want.sum(), z64)[0]
    tol = 1e-5 if dtype == torch.float32 else 8e-3  # bf16 gradients are rounded to 8 bits
    torch.testing.assert_close(g, g_want, rtol=tol, atol=tol * float(g_want.abs().max()))


def test_nan_in_student_logits_propagates_to_its_row_only():
    z, t, target = make_inputs(4, 5, dtype=torch.float32)
    with torch.no_grad():
        z[1, 2] = float("nan")
    rows = kd_loss(z, t, target, reduction="none")
    assert torch.isnan(rows[1]) and torch.isfinite(rows[[0, 2, 3]]).all()
    assert torch.isnan(kd_loss(z, t, target))
