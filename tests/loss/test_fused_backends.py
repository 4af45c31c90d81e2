"""Every fused ONE-loss backend (one kernel for terms and gradients) against the reference spec.

The tests are written once over :data:`FUSED`, the fused backends that can run here: "triton"
(on CPU through Triton's interpreter, which tests/conftest.py switches on when there is no GPU)
and "native" once it is registered. A backend's module may expose ``BLOCK_C_OVERRIDE`` so that
the multi-block loop over classes can be exercised on small C.

float32 tolerance: 1e-5 relative per element, plus an absolute 1e-5 of the tensor's largest
magnitude. The absolute part is needed for elements that come out of cancellation (a gradient
p_c - onehot_c + ... close to 0, a gate gradient sum_c z_c dz_e,c): there the float32 reference
itself is only accurate to a few ulps of the *summands*, and differs from the float64 truth by
up to 10% relative (measured), so a purely elementwise 1e-5 would test rounding noise.
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import one_fast.loss as loss_pkg
from one_fast import ONELossTerms, available_backends, one_loss
from tests.loss.helpers import CPU, IGNORE, RTOL, assert_close, make_inputs

FUSED = [b for b in ("triton", "native") if loss_pkg.unavailable_reason(b, CPU) is None]

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


CUDA = torch.device("cuda")
# The fused backends on the CPU, and GPU-marked on CUDA, where the compiled kernels use
# approximate exp and division (ex2.approx, div.full) that the interpreter never exercises.
ON_DEVICES = [pytest.param(b, CPU, id=b) for b in FUSED] + [
    pytest.param(b, CUDA, id=f"{b}-cuda", marks=[pytest.mark.gpu, gpu])
    for b in ("triton", "native")]


def require(backend, device):
    if backend not in available_backends(device):
        pytest.skip(f"{backend} backend not available on {device.type}")


# The module of each fused backend (where its test hooks live).
BACKEND_MODULES = {"triton": "one_fast.loss.triton_kernel", "native": "one_fast.loss.native"}


def backend_module(backend):
    return importlib.import_module(BACKEND_MODULES[backend])


def force_block(monkeypatch, backend, block_c):
    """Make the backend loop over C in blocks of ``block_c`` (if it lets tests choose)."""
    if block_c is not None and hasattr(backend_module(backend), "BLOCK_C_OVERRIDE"):
        monkeypatch.setattr(backend_module(backend), "BLOCK_C_OVERRIDE", block_c)


def check_against_reference(backend, logits, gate, target, rtol=RTOL, **opts):
    """Loss, every logged term and both gradients of ``backend`` equal the reference's."""
    got = one_loss(logits, gate, target, backend=backend, return_terms=True, **opts)
    want = one_loss(logits, gate, target, backend="reference", return_terms=True, **opts)
    for field in ONELossTerms._fields:
        assert_close(getattr(got, field), getattr(want, field), field, rtol)
    # a random cotangent per row checks the whole per-row Jacobian, not just its sum
    cot = torch.randn(want.loss.shape, dtype=want.loss.dtype, generator=torch.Generator()
                      .manual_seed(1)).to(want.loss.device)
    g_got = torch.autograd.grad((got.loss * cot).sum(), (logits, gate))
    g_want = torch.autograd.grad((want.loss * cot).sum(), (logits, gate))
    assert_close(g_got[0], g_want[0], "grad logits", rtol)
    assert_close(g_got[1], g_want[1], "grad gate", rtol)
    return got, want, g_got, g_want


# Representative combinations instead of the full product: every value of every axis appears
# (N, m, C, T, kl_weight, detach, reduction, ignored rows, layout), with small C at large N and
# large C at small N to keep the interpreter fast. block_c forces the multi-block loop.
#       N,   m, C,    T,   kl_weight, detach, reduction, ignore, layout,      block_c
GRID = [
    (1,   1, 2,    1.0, 0.0,  True,  "mean", "none", "contiguous", None),
    (7,   2, 10,   3.0, 0.3,  False, "sum",  "some", "strided",    None),
    (129, 3, 10,   4.5, 1.0,  True,  "none", "some", "contiguous", None),
    (129, 5, 100,  3.0, "t",  False, "mean", "some", "transposed", None),
    (7,   8, 100,  1.0, 1.0,  False, "none", "none", "contiguous", None),
    (7,   3, 1000, 4.5, 0.3,  True,  "mean", "all",  "contiguous", None),
    (7,   5, 1000, 3.0, 1.0,  False, "sum",  "some", "strided",    None),
    (1,   8, 1000, 3.0, 0.3,  False, "none", "none", "transposed", None),
    (129, 8, 2,    4.5, 0.3,  False, "sum",  "some", "contiguous", None),
    (129, 1, 100,  1.0, 1.0,  True,  "sum",  "all",  "strided",    None),
    (129, 2, 10,   1.0, 0.0,  False, "none", "all",  "transposed", None),
    (7,   2, 5000, 3.0, 1.0,  False, "mean", "some", "contiguous", 512),
    (7,   3, 5000, 4.5, "t",  True,  "none", "none", "strided",    None),
    (1,   5, 5000, 1.0, 0.3,  False, "sum",  "none", "transposed", 512),
    (7,   1, 1000, 3.0, 0.0,  False, "mean", "some", "contiguous", 128),
]


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_one_class_gives_zeros_up_to_float32_rounding(backend, reduction):
    """With one class every CE and KL term, and every gradient, is exactly 0 (p = 1 = onehot).
    The relative comparisons cannot judge an all-zero result, so this bound is absolute: 8 ulps
    of the largest logit. Hypothesis found the case: the Triton kernel's ensemble CE came out
    2^-25 below 0 (its softmax is 1 - O(eps), not 1); the reference gets exact zeros."""
    logits, gate, target = make_inputs(2, 6, 1, ignore="none", seed=0)
    bound = 8 * torch.finfo(torch.float32).eps * max(1.0, float(logits.detach().abs().max()))
    for name in (backend, "reference"):
        terms = one_loss(logits, gate, target, temperature=1.0, kl_weight=1.0,
                         detach_teacher=False, reduction=reduction, backend=name,
                         return_terms=True)
        grads = torch.autograd.grad(terms.loss.sum(), (logits, gate))
        values = {f: getattr(terms, f) for f in ONELossTerms._fields}
        values.update({"grad logits": grads[0], "grad gate": grads[1]})
        for what, value in values.items():
            assert float(value.detach().abs().max()) <= bound, (name, what, value)


def _kl_weight(value, device=CPU, dtype=torch.float32):
    """A number, or "t": a 1-element tensor (a float32 one for float32 logits: the reference
    rounds kl_weight * T**2 to the tensor's dtype)."""
    return torch.tensor(0.3, device=device, dtype=dtype) if value == "t" else value


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("n,m,c,temperature,kl_weight,detach,reduction,ignore,layout,block_c",
                         GRID)
def test_matches_reference_float32(backend, monkeypatch, n, m, c, temperature, kl_weight, detach,
                                   reduction, ignore, layout, block_c):
    force_block(monkeypatch, backend, block_c)
    logits, gate, target = make_inputs(n, m, c, layout=layout, ignore=ignore)
    got, *_ = check_against_reference(
        backend, logits, gate, target, temperature=temperature,
        kl_weight=_kl_weight(kl_weight), detach_teacher=detach, reduction=reduction)
    assert got.loss.dtype == torch.float32


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("case", [GRID[1], GRID[3], GRID[11], GRID[13]],
                         ids=["C10", "C100", "C5000-blocks", "C5000-m5"])
def test_matches_reference_float64(backend, monkeypatch, case):
    """float64 accumulates in float64: the kernel equals the reference to ~1e-12. (T + 0.1 is
    not a float32 number: T must reach the kernel's arithmetic in float64 too.)"""
    n, m, c, temperature, kl_weight, detach, reduction, ignore, layout, block_c = case
    force_block(monkeypatch, backend, block_c)
    logits, gate, target = make_inputs(n, m, c, dtype=torch.float64, layout=layout, ignore=ignore)
    got, *_ = check_against_reference(
        backend, logits, gate, target, rtol=1e-11, temperature=temperature + 0.1,
        kl_weight=_kl_weight(kl_weight, dtype=torch.float64), detach_teacher=detach,
        reduction=reduction)
    assert got.loss.dtype == torch.float64


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("reduction,m,c,block_c", [("mean", 2, 6, None), ("none", 3, 37, 16)])
def test_gradcheck_float64(backend, monkeypatch, reduction, m, c, block_c):
    """gradcheck through the kernel, with the teacher-side KL gradient (detach_teacher=False).

    With detach_teacher=True the returned gradient deliberately omits the teacher's KL path, so
    it is not the derivative of the loss value and gradcheck does not apply; that case is held
    to the float64 reference (itself checked against an independent formulation) above.
    """
    force_block(monkeypatch, backend, block_c)
    logits, gate, target = make_inputs(3, m, c, dtype=torch.float64, scale=1.5)
    target[1] = IGNORE

    def fn(z, g):
        return one_loss(z, g, target, temperature=2.5, kl_weight=0.8, detach_teacher=False,
                        reduction=reduction, backend=backend)

    assert torch.autograd.gradcheck(fn, (logits, gate), fast_mode=block_c is not None)


@pytest.mark.parametrize("backend", FUSED)
def test_every_output_element_written(backend, monkeypatch):
    """Outputs are allocated NaN-filled; every element (ignored rows, padding edges) is written.

    Python launchers allocate through ``torch.empty``, which the test replaces; a backend that
    allocates in C++ (native) offers a ``POISON_OUTPUTS`` hook that NaN-fills them instead.
    """
    real_empty = torch.empty
    made = []

    def poisoned_empty(*args, **kwargs):
        t = real_empty(*args, **kwargs)
        if t.is_floating_point():
            t.fill_(float("nan"))
        made.append(t)
        return t

    # C = 300 with blocks of 128: a partial last block; N = 7 rows: a partial row group.
    force_block(monkeypatch, backend, 128)
    logits, gate, target = make_inputs(7, 3, 300, ignore="some")
    kwargs = dict(temperature=3.0, kl_weight=0.5, detach_teacher=False, reduction="none",
                  return_terms=True)
    hooked = hasattr(backend_module(backend), "POISON_OUTPUTS")
    if hooked:
        monkeypatch.setattr(backend_module(backend), "POISON_OUTPUTS", True)
    else:
        monkeypatch.setattr(torch, "empty", poisoned_empty)
    got = one_loss(logits, gate, target, backend=backend, **kwargs)
    ones = torch.ones_like(got.loss)  # backward only scales: grads are the kernel's buffers
    g_got = torch.autograd.grad(got.loss, (logits, gate), ones)
    monkeypatch.setattr(torch, "empty", real_empty)

    poisoned = {t.untyped_storage().data_ptr() for t in made}
    for name in ("loss", "ce_per_branch", "ce_ensemble", "kl_per_branch"):
        out = getattr(got, name)
        assert hooked or out.untyped_storage().data_ptr() in poisoned, (
            f"{name} was not allocated through torch.empty from Python, so this test cannot "
            "poison it: allocate the outputs in the Python launcher (or give the test a hook)")
        assert torch.isfinite(out).all(), f"{name} has unwritten (NaN) elements"
    assert hooked or len(made) >= 6, "the backend did not allocate its outputs via torch.empty"
    for grad, name in zip(g_got, ("grad logits", "grad gate"), strict=True):
        assert torch.isfinite(grad).all(), f"{name} has unwritten (NaN) elements"
    want = one_loss(logits, gate, target, backend="reference", **kwargs)
    g_want = torch.autograd.grad(want.loss, (logits, gate), ones)
    assert_close(got.loss, want.loss, "loss")
    assert_close(g_got[0], g_want[0], "grad logits")
    assert_close(g_got[1], g_want[1], "grad gate")
    assert torch.equal(g_got[0][1::3], torch.zeros_like(g_got[0][1::3]))  # ignored rows: 0


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_all_rows_ignored(backend, reduction):
    logits, gate, target = make_inputs(5, 3, 10, ignore="all")
    loss = one_loss(logits, gate, target, reduction=reduction, backend=backend)
    assert torch.equal(loss, torch.zeros_like(loss))
    gl, gg = torch.autograd.grad(loss.sum(), (logits, gate))
    assert torch.equal(gl, torch.zeros_like(gl)) and torch.equal(gg, torch.zeros_like(gg))


@pytest.mark.parametrize("backend", FUSED)
def test_empty_batch(backend):
    logits, gate, target = make_inputs(0, 3, 10)
    loss = one_loss(logits, gate, target, backend=backend)
    assert loss.item() == 0.0
    gl, gg = torch.autograd.grad(loss, (logits, gate))
    assert gl.shape == (0, 3, 10) and gg.shape == (0, 3)


@pytest.mark.parametrize("backend", FUSED)
def test_single_class(backend):
    logits, gate, target = make_inputs(4, 3, 1, ignore="none")
    check_against_reference(backend, logits, gate, target, detach_teacher=False)


@pytest.mark.parametrize("backend", FUSED)
def test_vocabulary_sized_rows(backend):
    """C beyond 262,144 (not a power of two): the default blocks, many of them."""
    logits, gate, target = make_inputs(1, 2, 262_147, ignore="none")
    check_against_reference(backend, logits, gate, target, detach_teacher=False,
                            reduction="none")


# ---- numerics -------------------------------------------------------------------------------

def _outputs(backend, logits, gate, target, **opts):
    """Per-row loss, CE per branch, CE of the ensemble, KL per branch, both gradients."""
    t = one_loss(logits, gate, target, backend=backend, reduction="none", return_terms=True,
                 **opts)
    grads = torch.autograd.grad(t.loss.sum(), (logits, gate))
    return (t.loss, t.ce_per_branch, t.ce_ensemble, t.kl_per_branch, *grads)


def check_numerics(backend, logits, gate, target, **opts):
    """No NaN/inf, and every output within a small multiple of the float32 reference's own
    error from the float64 truth. (Elementwise agreement with the float32 reference would
    compare rounding noise here: e.g. a CE of 1e-6 that both compute as lse - z_y with an
    error of eps * |lse|.)"""
    names = ("loss", "ce branch", "ce ensemble", "kl", "grad logits", "grad gate")
    got = _outputs(backend, logits, gate, target, **opts)
    ref = _outputs("reference", logits, gate, target, **opts)
    z = logits.detach().double().requires_grad_()
    g = gate.detach().double().requires_grad_()
    truth = _outputs("reference", z, g, target, **opts)
    eps = torch.finfo(torch.float32).eps
    for a, r, t, name in zip(got, ref, truth, names, strict=True):
        assert torch.isfinite(a).all(), f"{name}: non-finite values"
        err, ref_err = (a.double() - t).abs().max(), (r.double() - t).abs().max()
        bound = 4 * ref_err + eps * t.abs().max()
        assert err <= bound, f"{name}: error {err} vs the float32 reference's {ref_err}"


@pytest.mark.parametrize("backend,device", ON_DEVICES)
@pytest.mark.parametrize("detach", [True, False])
@pytest.mark.parametrize("scale,offset", [(1e4, 0.0), (3.0, 1e4)], ids=["spread", "offset"])
def test_large_logits(backend, device, monkeypatch, detach, scale, offset):
    """|logits| ~ 1e4: spread out (near one-hot softmaxes), or O(1) apart around 1e4."""
    require(backend, device)
    force_block(monkeypatch, backend, 64)
    logits, gate, target = make_inputs(7, 3, 150, scale=scale, device=device)
    with torch.no_grad():
        logits += offset
    assert logits.abs().max() > 1e4
    check_numerics(backend, logits, gate, target, temperature=3.0, kl_weight=1.0,
                   detach_teacher=detach)


@pytest.mark.parametrize("backend,device", ON_DEVICES)
@pytest.mark.parametrize("temperature", [1.0, 4.5])
def test_confident_predictions(backend, device, temperature):
    """p_y >= 0.9999 for every branch and the ensemble: the p_y - 1 cancellation."""
    require(backend, device)
    logits, gate, target = make_inputs(9, 3, 100, scale=1.0, ignore="none", device=device)
    rows = torch.arange(9, device=device)
    with torch.no_grad():
        logits[rows, :, target] += 20.0
    p_y = torch.softmax(logits.detach(), -1)[rows, :, target]
    assert p_y.min() >= 0.9999
    check_numerics(backend, logits, gate, target, temperature=temperature, kl_weight=1.0,
                   detach_teacher=False)


@pytest.mark.parametrize("backend,device", ON_DEVICES)
def test_identical_branches_have_zero_kl(backend, device):
    """All branches equal -> z_e = z_i up to rounding: KL = 0, and q_i - q_e cancels."""
    require(backend, device)
    logits, gate, target = make_inputs(7, 4, 50, device=device)
    with torch.no_grad():
        logits[:] = logits[:, :1].clone()
    for b in (backend, "reference"):  # both compute log-probabilities of size ~log C = 4
        terms = one_loss(logits, gate, target, backend=b, reduction="none", return_terms=True)
        assert terms.kl_per_branch.abs().max() <= 4 * torch.finfo(torch.float32).eps
    check_numerics(backend, logits, gate, target, temperature=3.0, kl_weight=1.0,
                   detach_teacher=False)


@pytest.mark.parametrize("backend", FUSED)
def test_nan_input_propagates(backend):
    logits, gate, target = make_inputs(4, 2, 20, ignore="none")
    with torch.no_grad():
        logits[1, 0, 7] = float("nan")
    rows = one_loss(logits, gate, target, reduction="none", backend=backend)
    assert torch.isnan(rows[1]) and torch.isfinite(rows[[0, 2, 3]]).all()
    gl, _ = torch.autograd.grad(rows[[0, 2, 3]].sum(), (logits, gate))
    assert torch.isfinite(gl[[0, 2, 3]]).all()
    assert torch.isnan(one_loss(logits, gate, target, backend=backend))


@pytest.mark.parametrize("backend", FUSED)
def test_out_of_range_target_gives_nan_row(backend):
    """What validation lets through while compiling (it cannot read values) is NaN, not 0."""
    logits, gate, target = make_inputs(5, 2, 10, ignore="none")
    target[1], target[3] = 10, -3
    row_terms = loss_pkg.BACKENDS[backend].row_terms  # no validation, as in a compiled step
    rows = row_terms(logits, gate, target, 3.0, 1.0, False, IGNORE)
    bad, ok = torch.tensor([1, 3]), torch.tensor([0, 2, 4])
    assert torch.isnan(rows.loss[bad]).all() and torch.isfinite(rows.loss[ok]).all()
    want = one_loss(logits[ok], gate[ok], target[ok], backend="reference", reduction="none",
                    detach_teacher=False)
    assert_close(rows.loss[ok], want, "valid rows")
    got_grads = torch.autograd.grad(rows.loss.sum(), (logits, gate))
    want_grads = torch.autograd.grad(want.sum(), (logits, gate))
    names = ("grad logits", "grad gate")
    for got_g, want_g, name in zip(got_grads, want_grads, names, strict=True):
        assert torch.isnan(got_g[bad]).all(), f"{name}: bad rows not NaN"
        assert_close(got_g[ok], want_g[ok], name)


@pytest.mark.parametrize("backend", FUSED)
def test_validation_errors_match_reference(backend):
    logits, gate, target = make_inputs(3, 2, 5)
    bad_calls = [
        lambda b: one_loss(logits, gate, torch.tensor([0, 5, 1]), backend=b),
        lambda b: one_loss(logits[0], gate, target, backend=b),
        lambda b: one_loss(logits, gate[:, :1], target, backend=b),
        lambda b: one_loss(logits, gate, target, temperature=0.0, backend=b),
    ]
    for call in bad_calls:
        with pytest.raises((ValueError, TypeError)) as want:
            call("reference")
        with pytest.raises(type(want.value), match=re.escape(str(want.value))):
            call(backend)


@pytest.mark.parametrize("backend", FUSED)
def test_kl_weight_requiring_grad_is_refused_not_silently_detached(backend):
    logits, gate, target = make_inputs(3, 2, 5)
    weight = torch.tensor(0.5, requires_grad=True)
    with pytest.raises(ValueError, match="kl_weight: a tensor that requires grad"):
        one_loss(logits, gate, target, kl_weight=weight, backend=backend)
    got = one_loss(logits, gate, target, kl_weight=weight.detach(), backend=backend)
    want = one_loss(logits, gate, target, kl_weight=weight, backend="reference")
    assert_close(got, want.detach(), "loss")


# ---- random shapes and options --------------------------------------------------------------

@pytest.mark.parametrize("backend", FUSED)
@settings(max_examples=10, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
# C >= 2: with one class every output is 0 and only an absolute bound can judge it (above).
@given(n=st.integers(1, 20), m=st.integers(1, 8), c=st.integers(2, 200),
       temperature=st.floats(0.5, 6.0), kl_weight=st.floats(0.0, 2.0), detach=st.booleans(),
       reduction=st.sampled_from(["mean", "sum", "none"]),
       ignore=st.sampled_from(["none", "some", "all"]),
       layout=st.sampled_from(["contiguous", "strided", "transposed"]),
       block_c=st.sampled_from([None, 16, 64]), seed=st.integers(0, 2**16))
def test_random_shapes_and_options(backend, monkeypatch, n, m, c, temperature, kl_weight, detach,
                                   reduction, ignore, layout, block_c, seed):
    force_block(monkeypatch, backend, block_c)
    logits, gate, target = make_inputs(n, m, c, layout=layout, ignore=ignore, seed=seed)
    check_against_reference(backend, logits, gate, target, temperature=temperature,
                            kl_weight=kl_weight, detach_teacher=detach, reduction=reduction)


# ---- torch.compile --------------------------------------------------------------------------

@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
def test_compiles_without_graph_breaks(backend, compiler):
    """torch.compile(fullgraph=True) traces the op (fake impl + autograd): one graph, no break,
    no recompile when the tensor kl_weight changes value, and the same numbers as eager."""
    from torch._dynamo.testing import CompileCounterWithBackend
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    counter = CompileCounterWithBackend(compiler)

    def fn(z, g, y, w):
        t = one_loss(z, g, y, temperature=3.0, kl_weight=w, detach_teacher=False,
                     backend=backend, return_terms=True)
        return t.loss, t.kl

    compiled = torch.compile(fn, backend=counter, fullgraph=True)
    logits, gate, target = make_inputs(9, 3, 40)
    for value in (0.3, 0.9):
        w = torch.tensor(value)
        loss_c, kl_c = compiled(logits, gate, target, w)
        grads_c = torch.autograd.grad(loss_c, (logits, gate))
        loss_e, kl_e = fn(logits, gate, target, w)
        grads_e = torch.autograd.grad(loss_e, (logits, gate))
        torch.testing.assert_close(loss_c, loss_e, rtol=1e-6, atol=0)
        torch.testing.assert_close(kl_c, kl_e, rtol=1e-6, atol=0)
        for a, b in zip(grads_c, grads_e, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)
    assert counter.frame_count == 1, "recompiled when kl_weight changed value"
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])


# ---- backend selection ----------------------------------------------------------------------

@pytest.mark.skipif(not loss_pkg.backends.TRITON_INSTALLED, reason="triton is not installed")
def test_auto_picks_triton_on_cuda_only():
    assert available_backends("cuda")[0] == "triton"
    assert available_backends("cpu")[0] != "triton"  # even under the interpreter
    assert ("triton" in available_backends("cpu")) == (os.environ.get("TRITON_INTERPRET") == "1")
    assert loss_pkg.resolve_backend("auto", CPU).name != "triton"


def test_import_without_triton():
    """one_fast imports when triton is missing; the backend is then simply not offered."""
    code = ("import sys; sys.modules['triton'] = None\n"
            "import one_fast, one_fast.loss as L\n"
            "assert 'triton' not in L.available_backends('cuda') and 'reference' in L.BACKENDS\n"
            "assert 'triton is not installed' in L.unavailable_reason('triton', 'cuda')\n"
            "assert one_fast.available_backends('cuda')[0] != 'triton'\n")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root,
                   env={**os.environ, "PYTHONPATH": root})


# ---- low precision (CPU interpreter: loads/stores only; GPU: the real thing) ---------------

def check_low_precision(backend, dtype, device):
    """bf16/fp16 storage against the float32 reference on the same (rounded) inputs: the loss
    within 1e-3 relative; gradients no further from the float32 gradients than the
    reference's own gradients in that dtype are (plus one rounding step)."""
    logits, gate, target = make_inputs(33, 3, 1000, dtype=dtype, device=device)
    opts = dict(temperature=3.0, kl_weight=1.0, detach_teacher=False, reduction="sum")
    got = one_loss(logits, gate, target, backend=backend, **opts)
    lowp_ref = one_loss(logits, gate, target, backend="reference", **opts)
    z32 = logits.detach().float().requires_grad_()
    g32 = gate.detach().float().requires_grad_()
    want = one_loss(z32, g32, target, backend="reference", **opts)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-3, atol=0)
    g_got = torch.autograd.grad(got, (logits, gate))
    g_lowp = torch.autograd.grad(lowp_ref, (logits, gate))
    g_want = torch.autograd.grad(want, (z32, g32))
    for a, r, w, name in zip(g_got, g_lowp, g_want, ("grad logits", "grad gate"), strict=True):
        assert a.dtype == dtype and torch.isfinite(a).all(), name
        err = (a.float() - w).abs().max()
        ref_err = (r.float() - w).abs().max()
        ulp = torch.finfo(dtype).eps * w.abs().max()
        assert err <= 2 * ref_err + ulp, f"{name}: error {err} vs reference's {ref_err}"


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_storage_cpu(backend, dtype):
    check_low_precision(backend, dtype, CPU)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("backend", ["triton", "native"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_gpu(backend, dtype):
    if backend not in available_backends("cuda"):
        pytest.skip(f"{backend} backend not built/installed")
    check_low_precision(backend, dtype, torch.device("cuda"))


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("backend", ["triton", "native"])
def test_matches_reference_gpu_float32(backend):
    if backend not in available_backends("cuda"):
        pytest.skip(f"{backend} backend not built/installed")
    for n, m, c, temperature, kl_weight, detach, reduction, ignore, layout, _ in GRID:
        logits, gate, target = make_inputs(n, m, c, layout=layout, ignore=ignore,
                                           device=torch.device("cuda"))
        check_against_reference(backend, logits, gate, target, temperature=temperature,
                                kl_weight=_kl_weight(kl_weight, "cuda"), detach_teacher=detach,
                                reduction=reduction)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("backend", ["triton", "native"])
def test_reduce_overhead_compile_gpu(backend):
    """Under CUDA graphs (mode="reduce-overhead") the op replays with new input values and a
    changed kl_weight tensor, and matches eager."""
    if backend not in available_backends("cuda"):
        pytest.skip(f"{backend} backend not built/installed")
    torch._dynamo.reset()

    def fn(z, g, y, w):
        return one_loss(z, g, y, temperature=3.0, kl_weight=w, detach_teacher=False,
                        backend=backend)

    compiled = torch.compile(fn, mode="reduce-overhead", fullgraph=True)
    cuda = torch.device("cuda")
    for step in range(4):
        logits, gate, target = make_inputs(64, 3, 100, seed=step, device=cuda)
        w = torch.tensor(0.25 * (step + 1), device=cuda)
        loss_c = compiled(logits, gate, target, w)
        grads_c = torch.autograd.grad(loss_c, (logits, gate))
        loss_e = fn(logits, gate, target, w)
        grads_e = torch.autograd.grad(loss_e, (logits, gate))
        torch.testing.assert_close(loss_c, loss_e, rtol=1e-6, atol=0)
        for a, b in zip(grads_c, grads_e, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
