"""Inputs and the materialised-logits specification for the fused linear + ONE loss tests."""

from __future__ import annotations

import torch

from one_fast import fused_linear_one_loss, one_loss
from tests.loss.helpers import CPU, IGNORE, RTOL, assert_close


def make_linear_inputs(n, h, m, v, *, per_head=False, bias=True, dtype=torch.float32,
                       ignore=True, seed=0, device=CPU):
    """hidden (N, H) or (N, m, H), weight (m, V, H), bias (m, V) or None, gate (N, m), target.

    Logits come out with a spread of a few units (weight ~ 3 / sqrt(H)), like a trained head's.
    Every floating tensor requires grad; rows 1, 4, 7, ... are ignored when ``ignore``.
    """
    gen = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    hidden = torch.randn((n, m, h) if per_head else (n, h), generator=gen, dtype=f64)
    weight = torch.randn(m, v, h, generator=gen, dtype=f64) * (3.0 / h ** 0.5)
    b = torch.randn(m, v, generator=gen, dtype=f64) if bias else None
    gate = torch.softmax(torch.randn(n, m, generator=gen, dtype=f64), 1)
    target = torch.randint(0, v, (n,), generator=gen)
    if ignore:
        target[1::3] = IGNORE
    leaves = [t.to(device, dtype).requires_grad_() if t is not None else None
              for t in (hidden, weight, b, gate)]
    return (*leaves, target.to(device))


def materialised_logits(hidden, weight, bias):
    """logits[n, i] = hidden[n] @ weight[i].T + bias[i] (hidden[n, i] for per-head hidden)."""
    eq = "nh,mvh->nmv" if hidden.dim() == 2 else "nmh,mvh->nmv"
    z = torch.einsum(eq, hidden, weight)
    return z if bias is None else z + bias


def spec_loss(hidden, weight, bias, gate, target, **opts):
    """The specification: ``one_loss`` (reference backend) of the materialised logits."""
    return one_loss(materialised_logits(hidden, weight, bias), gate, target,
                    backend="reference", **opts)


def fused_and_spec_grads(inputs, opts, spec_dtype=torch.float64, cotangent_seed=1, **fused_opts):
    """(fused loss, fused grads, spec loss, spec grads) w.r.t. hidden, weight, bias, gate.

    The spec runs on copies of the inputs in ``spec_dtype``; a random cotangent (for
    reduction="none") checks the whole per-row Jacobian, not only its sum.
    """
    hidden, weight, bias, gate, target = inputs
    leaves = [t for t in (hidden, weight, bias, gate) if t is not None]
    got = fused_linear_one_loss(hidden, weight, gate, target, bias=bias, **fused_opts, **opts)
    copies = [t.detach().to(spec_dtype).requires_grad_() if t is not None else None
              for t in (hidden, weight, bias, gate)]
    want = spec_loss(*copies[:3], copies[3], target, **opts)
    cot = torch.randn(want.shape, dtype=torch.float64,
                      generator=torch.Generator().manual_seed(cotangent_seed))
    g_got = torch.autograd.grad((got * cot.to(got)).sum(), leaves)
    g_want = torch.autograd.grad((want * cot.to(want)).sum(),
                                 [c for c in copies if c is not None])
    return got, g_got, want, g_want


def check(inputs, opts, rtol=RTOL, **fused_opts):
    """Loss and every gradient of the fused path against the float64 specification."""
    got, g_got, want, g_want = fused_and_spec_grads(inputs, opts, **fused_opts)
    dtype = inputs[0].dtype
    assert got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert_close(got, want.to(got.dtype), "loss", rtol)
    names = [name for name, t in zip(("hidden", "weight", "bias", "gate"), inputs[:4],
                                     strict=True) if t is not None]
    for name, a, b in zip(names, g_got, g_want, strict=True):
        assert a.dtype == dtype, f"grad {name} is {a.dtype}"
        assert_close(a, b.to(a.dtype), f"grad {name}", rtol)


def check_low_precision(dtype, device, per_head, accum_dtype=None):
    """bf16/fp16 hidden and weight: the loss is float32 and within 1e-2 of the float64 spec on
    the same rounded inputs; each gradient is no further from the float64 gradient than the
    materialised path's (linear heads in that dtype + one_loss) is, plus one rounding step --
    plus one more per chunk with ``accum_dtype=dtype`` (each chunk's sum is rounded to it)."""
    inputs = make_linear_inputs(40, 16, 3, 300, per_head=per_head, dtype=dtype, device=device)
    hidden, weight, bias, gate, target = inputs
    chunk = 16
    got, g_got, want, g_want = fused_and_spec_grads(inputs, dict(reduction="sum"),
                                                    chunk_size=chunk, accum_dtype=accum_dtype)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-2, atol=0)
    lowp = one_loss(materialised_logits(hidden, weight, bias), gate, target, reduction="sum")
    cot = torch.randn((), dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    g_lowp = torch.autograd.grad(lowp * cot.to(lowp), (hidden, weight, bias, gate))
    roundings = 1 if accum_dtype is None else 1 + -(-hidden.shape[0] // chunk)
    for name, a, r, w in zip(("hidden", "weight", "bias", "gate"), g_got, g_lowp, g_want,
                             strict=True):
        assert a.dtype == dtype, name
        err = (a.double() - w).abs().max()
        ref_err = (r.double() - w).abs().max()
        ulp = torch.finfo(dtype).eps * w.abs().max()
        assert err <= ref_err + roundings * ulp, (
            f"grad {name}: error {err:.3e}, materialised {ref_err:.3e}")
