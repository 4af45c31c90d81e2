"""dml_loss against an independent float64 formulation, plus gradcheck, detach and bad input."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from one_fast import DMLLoss, dml_loss, kd_loss
from one_fast.loss import dml_reference

IGNORE = -100


def _lse(v):
    top = v.max()
    return top + torch.log(torch.exp(v - top).sum())


def independent_dml(logits, target, temperature, kl_weight, reduction):
    """Float64, one row and one peer pair at a time; returns (loss, ce (N, m), kl (N, m))."""
    z_all = logits.double()
    n, m, _ = z_all.shape
    rows, ces, kls = [], [], []
    for r in range(n):
        y = int(target[r])
        if y == IGNORE:
            rows.append(z_all[r].sum() * 0.0)
            ces.append(z_all.new_zeros(m))
            kls.append(z_all.new_zeros(m))
            continue
        total = z_all.new_zeros(())
        ce_r, kl_r = [], []
        for i in range(m):
            zi = z_all[r, i]
            ce = _lse(zi) - zi[y]
            log_qi = zi / temperature - _lse(zi / temperature)
            kl = z_all.new_zeros(())
            for j in range(m):
                if j == i:
                    continue
                zj = z_all[r, j].detach()  # peer j teaches i and is not moved by it
                log_qj = zj / temperature - _lse(zj / temperature)
                kl = kl + (torch.exp(log_qj) * (log_qj - log_qi)).sum() / (m - 1)
            total = total + ce + kl_weight * temperature * temperature * kl
            ce_r.append(ce.detach())
            kl_r.append(kl.detach())
        rows.append(total)
        ces.append(torch.stack(ce_r))
        kls.append(torch.stack(kl_r))
    per_row = torch.stack(rows)
    count = sum(int(t) != IGNORE for t in target)
    loss = {"none": per_row, "sum": per_row.sum(),
            "mean": per_row.sum() / max(count, 1)}[reduction]
    return loss, torch.stack(ces), torch.stack(kls)


def make_inputs(n, m, c, *, dtype=torch.float64, ignore=(), seed=0, scale=3.0):
    gen = torch.Generator().manual_seed(seed)
    z = (torch.randn(n, m, c, generator=gen, dtype=torch.float64) * scale).to(dtype)
    target = torch.randint(0, c, (n,), generator=gen)
    for r in ignore:
        target[r] = IGNORE
    return z.requires_grad_(), target


@pytest.mark.parametrize("reduction,m,temperature,kl_weight", list(itertools.product(
    ["mean", "sum", "none"], [1, 2, 3, 5], [1.0, 3.0], [0.0, 0.6])))
def test_matches_independent_formulation(reduction, m, temperature, kl_weight):
    z, target = make_inputs(6, m, 9, ignore=(1, 4))
    got = dml_loss(z, target, temperature=temperature, kl_weight=kl_weight,
                   reduction=reduction, return_terms=True)
    want, want_ce, want_kl = independent_dml(z, target, temperature, kl_weight, reduction)
    torch.testing.assert_close(got.loss, want, rtol=1e-12, atol=1e-12)
    weights = torch.randn_like(want)
    g_got = torch.autograd.grad((got.loss * weights).sum(), z)[0]
    g_want = torch.autograd.grad((want * weights).sum(), z)[0]
    torch.testing.assert_close(g_got, g_want, rtol=1e-10, atol=1e-12)
    if reduction == "none":
        torch.testing.assert_close(got.ce_per_branch, want_ce, rtol=1e-12, atol=1e-12)
        if kl_weight != 0:
            torch.testing.assert_close(got.kl_per_branch, want_kl, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("m", [2, 3, 4])
def test_is_a_sum_of_kd_losses_between_peers(m):
    # Peer i learns from each j != i as from a frozen KD teacher, its CE shared among the m - 1:
    #   dml = sum_i 1/(m-1) sum_{j != i} kd_loss(z_i, teacher z_j, kd_weight = w)
    # kd_loss detaches its teacher, so equal gradients mean no peer pushes another.
    z, target = make_inputs(5, m, 7, ignore=(3,))
    got = dml_loss(z, target, temperature=2.0, kl_weight=0.8)
    want = sum(kd_loss(z[:, i], z[:, j], target, temperature=2.0, kd_weight=0.8) / (m - 1)
               for i in range(m) for j in range(m) if j != i)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.autograd.grad(got, z)[0], torch.autograd.grad(want, z)[0],
                               rtol=1e-10, atol=1e-12)


def test_peer_gradient_ignores_how_it_moves_the_others():
    # Only peer 0's logits vary: d loss / d z_0 is peer 0's own objective (CE_0 + its KL from
    # peer 1), not the change peer 0 makes to peer 1's KL term.
    z, target = make_inputs(4, 2, 6)
    g = torch.autograd.grad(dml_loss(z, target, kl_weight=1.0), z)[0]
    own = F.cross_entropy(z[:, 0], target) + F.kl_div(
        F.log_softmax(z[:, 0], -1), F.log_softmax(z[:, 1].detach(), -1), log_target=True,
        reduction="batchmean")
    torch.testing.assert_close(g[:, 0], torch.autograd.grad(own, z)[0][:, 0])
    pushes = F.kl_div(F.log_softmax(z[:, 1].detach(), -1), F.log_softmax(z[:, 0], -1),
                      log_target=True, reduction="batchmean")
    assert torch.autograd.grad(pushes, z)[0][:, 0].abs().max() > 1e-3  # the path left out


@pytest.mark.parametrize("m", [1, 3])
def test_gradcheck_float64(m):
    # dml_loss is the derivative of a function only where no peer teaches another (m = 1, or
    # kl_weight = 0); the KL gradients are checked above against the independent formulation
    # and against gradchecked kd_loss.
    z, target = make_inputs(4, m, 6, ignore=(1,))
    assert torch.autograd.gradcheck(
        lambda zz: dml_loss(zz, target, temperature=2.0, kl_weight=0.7 if m == 1 else 0.0,
                            reduction="none"), (z,))


def test_one_peer_is_plain_cross_entropy():
    z, target = make_inputs(8, 1, 10, dtype=torch.float32)
    terms = dml_loss(z, target, kl_weight=3.0, return_terms=True)
    torch.testing.assert_close(terms.loss, F.cross_entropy(z[:, 0], target))
    assert terms.kl.item() == 0.0


def test_identical_peers_have_zero_kl():
    z, target = make_inputs(5, 1, 8, dtype=torch.float32)
    same = z.detach().expand(5, 3, 8).clone()
    terms = dml_loss(same, target, return_terms=True, reduction="none")
    assert torch.equal(terms.kl_per_branch, torch.zeros(5, 3))


def test_kl_not_computed_for_python_zero_weight(monkeypatch):
    z, target = make_inputs(4, 3, 5)

    def refuse(*args):
        raise AssertionError("KL computed although kl_weight is 0")

    monkeypatch.setattr(dml_reference, "soft_kl", refuse)
    terms = dml_loss(z, target, kl_weight=0, return_terms=True)
    assert terms.kl.item() == 0.0
    torch.testing.assert_close(
        terms.loss, sum(F.cross_entropy(z[:, i], target) for i in range(3)))
    with pytest.raises(AssertionError, match="KL computed"):
        dml_loss(z, target, kl_weight=torch.tensor(0.0))


def test_terms_add_up_to_loss():
    z, target = make_inputs(9, 4, 13, dtype=torch.float32, ignore=(0,))
    t = dml_loss(z, target, temperature=3.0, kl_weight=0.7, return_terms=True)
    torch.testing.assert_close(t.loss, t.ce_branches + 0.7 * 9.0 * t.kl)
    torch.testing.assert_close(t.ce_branches, t.ce_per_branch.sum())
    torch.testing.assert_close(t.kl, t.kl_per_branch.sum())
    assert t.ce_per_branch.shape == (4,) and not t.kl.requires_grad


def test_all_rows_ignored_gives_zero():
    z, target = make_inputs(3, 2, 5, dtype=torch.float32, ignore=(0, 1, 2))
    for reduction in ("mean", "sum"):
        loss = dml_loss(z, target, reduction=reduction)
        assert loss.item() == 0.0
        assert torch.equal(torch.autograd.grad(loss, z)[0], torch.zeros_like(z))
    assert torch.equal(dml_loss(z, target, reduction="none"), torch.zeros(3))


def test_one_class_gives_zero_loss_and_gradient():
    z, target = make_inputs(4, 3, 1)
    loss = dml_loss(z, target)
    assert loss.item() == 0.0
    assert torch.equal(torch.autograd.grad(loss, z)[0], torch.zeros_like(z))


def test_large_logits_stay_finite_and_accurate():
    z, target = make_inputs(5, 3, 9, dtype=torch.float32, scale=1e4)
    got = dml_loss(z, target, temperature=3.0, reduction="none")
    want, _, _ = independent_dml(z, target, 3.0, 1.0, "none")
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=0)
    g = torch.autograd.grad(got.sum(), z)[0]
    g_want = torch.autograd.grad(want.sum(), z)[0]  # float64 math, returned in z's float32
    torch.testing.assert_close(g, g_want, rtol=1e-5, atol=1e-5 * float(g_want.abs().max()))


def test_confident_peers_keep_true_class_gradient():
    row = torch.tensor([20.0, 0.0, 0.0, -3.0])
    z = torch.stack([row, row.roll(1)])[None].requires_grad_()  # peer 1 is wrong and confident
    target = torch.tensor([0])
    g = torch.autograd.grad(dml_loss(z, target, kl_weight=0.0), z)[0]
    want = torch.softmax(z.detach().double(), -1)
    want[0, 0, 0] = -(want[0, 0, 1:].sum())
    want[0, 1, 0] -= 1.0
    torch.testing.assert_close(g.double(), want, rtol=1e-5, atol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs_computed_in_float32(dtype):
    z, target = make_inputs(6, 3, 10, dtype=dtype)
    loss = dml_loss(z, target)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, dml_loss(z.detach().float(), target))
    assert torch.autograd.grad(loss, z)[0].dtype == dtype


def test_module_matches_function():
    z, target = make_inputs(8, 3, 9, dtype=torch.float32)
    crit = DMLLoss(temperature=2.0, reduction="sum")
    got = crit(z, target, kl_weight=torch.tensor(0.25))
    torch.testing.assert_close(got, dml_loss(z, target, temperature=2.0, kl_weight=0.25,
                                             reduction="sum"))
    assert "temperature=2.0" in repr(crit)


def _good():
    return torch.randn(4, 3, 5), torch.randint(0, 5, (4,))


@pytest.mark.parametrize("mutate,exc,match", [
    (lambda z, y: (z[0], y), ValueError, "logits must be a 3-D"),
    (lambda z, y: (z.long(), y), TypeError, "logits must be floating"),
    (lambda z, y: (z[:, :0], y), ValueError, "at least one peer"),
    (lambda z, y: (z[:, :, :0], y), ValueError, "at least one class"),
    (lambda z, y: (z, y[:3]), ValueError, "target must have N = 4"),
    (lambda z, y: (z, y.view(2, 2)), ValueError, "target must be a 1-D"),
    (lambda z, y: (z, y.bool()), TypeError, "target must hold integer"),
    (lambda z, y: (z, torch.tensor([0, 1, 5, 2])), ValueError, r"target values .*found 5"),
    (lambda z, y: (z, torch.tensor([0, -7, 2, 2])), ValueError, r"target .*found -7"),
])
def test_bad_tensors(mutate, exc, match):
    with pytest.raises(exc, match=match):
        dml_loss(*mutate(*_good()))


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(temperature=0.0), ValueError, "temperature must be finite and > 0"),
    (dict(temperature=-1.0), ValueError, "temperature"),
    (dict(temperature=float("inf")), ValueError, "temperature"),
    (dict(kl_weight=float("nan")), ValueError, "kl_weight must be finite and >= 0"),
    (dict(kl_weight=torch.ones(2)), ValueError, "kl_weight must be a number or a 1-element"),
    (dict(reduction="mean_all"), ValueError, "reduction must be one of"),
])
def test_bad_options(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        dml_loss(*_good(), **kwargs)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 6), m=st.integers(1, 4), c=st.integers(1, 12),
       temperature=st.floats(0.5, 6.0), kl_weight=st.floats(0.0, 2.0),
       reduction=st.sampled_from(["mean", "sum", "none"]), seed=st.integers(0, 2**16))
def test_random_shapes_and_options(n, m, c, temperature, kl_weight, reduction, seed):
    z, target = make_inputs(n, m, c, seed=seed)
    target[::3] = IGNORE
    got = dml_loss(z, target, temperature=temperature, kl_weight=kl_weight, reduction=reduction)
    want, _, _ = independent_dml(z, target, temperature, kl_weight, reduction)
    torch.testing.assert_close(got, want, rtol=1e-11, atol=1e-12)
    torch.testing.assert_close(torch.autograd.grad(got.sum(), z)[0],
                               torch.autograd.grad(want.sum(), z)[0], rtol=1e-9, atol=1e-12)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-5)])
def test_gpu_matches_float64_formulation(dtype, rtol):
    """On CUDA, against the float64 formulation of the same (rounded) inputs."""
    z, target = make_inputs(257, 3, 100, dtype=dtype)
    target[::7] = IGNORE
    zc = z.detach().cuda().requires_grad_()
    got = dml_loss(zc, target.cuda(), temperature=3.0, kl_weight=0.7, reduction="none")
    z64 = z.detach().double().requires_grad_()
    want, _, _ = independent_dml(z64, target, 3.0, 0.7, "none")
    torch.testing.assert_close(got.double().cpu(), want, rtol=rtol, atol=rtol)
    g = torch.autograd.grad(got.sum(), zc)[0].double().cpu()
    g_want = torch.autograd.grad(want.sum(), z64)[0]
    tol = 1e-5 if dtype == torch.float32 else 8e-3  # bf16 gradients are rounded to 8 bits
    torch.testing.assert_close(g, g_want, rtol=tol, atol=tol * float(g_want.abs().max()))


def test_nan_in_one_peer_propagates_to_its_row_only():
    z, target = make_inputs(4, 3, 5, dtype=torch.float32)
    with torch.no_grad():
        z[2, 1, 0] = float("nan")
    rows = dml_loss(z, target, reduction="none")
    assert torch.isnan(rows[2]) and torch.isfinite(rows[[0, 1, 3]]).all()
