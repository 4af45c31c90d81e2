"""ONE-loss settings: checked at construction, NumPy scalars, kl_weight and gate values, and
float32 accuracy of the KL at high temperature."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from one_fast.loss import (
    FUSED_MAX_TEMPERATURE,
    ONELoss,
    available_backends,
    one_loss,
    resolve_backend,
)
from one_fast.loss import reference as reference_backend

from .helpers import make_inputs
from .independent import independent_one_loss


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(temperature=0), ValueError, "temperature must be finite and > 0"),
    (dict(temperature=float("nan")), ValueError, "temperature"),
    (dict(temperature="3"), TypeError, "temperature must be a Python number"),
    (dict(reduction="foo"), ValueError, "reduction must be one of"),
    (dict(backend="cuda-magic"), ValueError, "backend must be 'auto' or one of"),
    (dict(ignore_index=1.5), TypeError, "ignore_index must be an int"),
])
def test_module_checks_its_settings_at_construction(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        ONELoss(**kwargs)


def test_numpy_scalars_are_numbers():
    logits, gate, target = make_inputs(6, 3, 5)
    want = one_loss(logits, gate, target, temperature=3.0, kl_weight=0.5)
    got = one_loss(logits, gate, target, temperature=np.float32(3.0), kl_weight=np.float64(0.5))
    assert torch.equal(got, want)
    assert torch.equal(ONELoss(temperature=np.int64(3), ignore_index=np.int64(-100))(
        logits, gate, target, kl_weight=0.5), want)


@pytest.mark.parametrize("kl_weight", [torch.tensor(float("nan")), torch.tensor([-1.0]),
                                       float("nan"), -5.0])
def test_nan_or_negative_kl_weight_is_refused(kl_weight):
    with pytest.raises(ValueError, match="kl_weight must be finite"):
        one_loss(*make_inputs(4, 3, 5), kl_weight=kl_weight)


@pytest.mark.parametrize("spoil", [
    lambda g: g * 2,                       # unnormalised
    lambda g: g - g.mean(1, keepdim=True),  # negative entries, sum 0
])
def test_gate_values_are_checked_on_the_cpu(spoil):
    logits, gate, target = make_inputs(5, 3, 4, ignore="none")
    with pytest.raises(ValueError, match="gate rows must be non-negative and sum to 1"):
        one_loss(logits, spoil(gate.detach()), target)


def test_non_finite_gate_gives_a_nan_loss_like_non_finite_logits():
    """A diverged network's NaN gate is not an argument error: the trainer must see NaN."""
    logits, gate, target = make_inputs(5, 3, 4, ignore="none")
    bad = gate.detach().clone()
    bad[2, 0] = float("nan")
    assert torch.isnan(one_loss(logits, bad, target))


def test_gate_rounded_to_bfloat16_passes():
    """A softmax computed under bf16 autocast sums to 1 only within bf16 rounding."""
    logits, _, target = make_inputs(64, 8, 4, ignore="none")
    gate = torch.softmax(torch.randn(64, 8) * 3, 1).bfloat16().float()
    assert (gate.sum(1) - 1).abs().max() > 1e-3  # the check must tolerate this
    assert torch.isfinite(one_loss(logits, gate, target))


@pytest.mark.parametrize("temperature", [1e2, 1e3, 1e4])
@pytest.mark.parametrize("detach", [True, False])
def test_float32_kl_is_accurate_at_high_temperature(temperature, detach):
    """The textbook KL (difference of log-softmaxes) loses 1e-3 relative at T = 1e3 and ~1 at
    T = 1e4 in float32; the reference's cancellation-free form keeps it to float32 rounding."""
    logits, gate, target = make_inputs(16, 3, 50, scale=2.0, ignore="none")
    got = one_loss(logits, gate, target, temperature=temperature, backend="reference",
                   detach_teacher=detach, reduction="sum", return_terms=True)
    want, want_terms = independent_one_loss(logits, gate, target, temperature, 1.0, detach,
                                            -100, "sum")
    kl_want = want_terms["kl"].sum()
    assert abs(float(got.kl) - float(kl_want)) <= 1e-5 * float(kl_want)
    # The KL part of the gradient: d(loss)/d(logits) minus that of the loss without the KL.
    def kl_grad(loss_fn):
        with_kl = torch.autograd.grad(loss_fn(1.0), (logits, gate), allow_unused=True)
        without = torch.autograd.grad(loss_fn(0.0), (logits, gate), allow_unused=True)
        return [a.double() - b.double() for a, b in zip(with_kl, without, strict=True)]
    got_g = kl_grad(lambda w: one_loss(logits, gate, target, temperature=temperature,
                                       kl_weight=w, detach_teacher=detach, reduction="sum",
                                       backend="reference"))
    want_g = kl_grad(lambda w: independent_one_loss(logits, gate, target, temperature, w, detach,
                                                    -100, "sum")[0])
    for a, b in zip(got_g, want_g, strict=True):
        if b.norm() > 0:
            assert (a - b).norm() <= 1e-5 * b.norm()


def test_fused_backends_are_refused_above_their_trusted_temperature():
    t = FUSED_MAX_TEMPERATURE * 10
    cpu = torch.device("cpu")
    assert resolve_backend("auto", cpu, 3, t).row_terms is reference_backend.row_terms
    for name in available_backends(cpu):
        if name != "reference":
            with pytest.raises(ValueError, match="not accurate in float32 at temperature"):
                resolve_backend(name, cpu, 3, t)


def test_float64_cancellation_free_kl_matches_the_textbook_form():
    """In float64 (gradchecks) the rewritten KL and its gradient agree with the textbook form."""
    logits, gate, target = make_inputs(7, 3, 11, dtype=torch.float64, ignore="none")
    for temperature in (20.0, 200.0):
        got = one_loss(logits, gate, target, temperature=temperature, reduction="none")
        want, _ = independent_one_loss(logits, gate, target, temperature, 1.0, True, -100,
                                       "none")
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
        g_got = torch.autograd.grad(got.sum(), logits)[0]
        g_want = torch.autograd.grad(want.sum(), logits)[0]
        torch.testing.assert_close(g_got, g_want, rtol=1e-10, atol=1e-12)
