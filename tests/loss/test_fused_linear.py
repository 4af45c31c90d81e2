"""fused_linear_one_loss / FusedLinearONELoss against one_loss on materialised logits.

The yardstick is the float64 specification (``one_loss`` of ``hidden @ weight.T + bias``
computed in float64 from the same inputs): float32 results are held to an elementwise 1e-5
relative error plus 1e-5 of the tensor's largest magnitude (tests/loss/helpers.assert_close),
float64 ones to 1e-10 of that; every gradient (hidden, weight, bias, gate) is checked with a
random per-row cotangent.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from one_fast import FusedLinearONELoss, ONELoss, ONELossTerms, fused_linear_one_loss, one_loss
from one_fast.loss import available_backends, backends, fused_linear_op
from one_fast.loss.fused_linear_chunks import (
    MAX_CHUNK_BYTES,
    MIN_CHUNK_BYTES,
    MIN_CHUNKS,
    auto_chunk_rows,
)
from tests.loss.fused_linear_helpers import (
    check,
    check_low_precision,
    make_linear_inputs,
    materialised_logits,
)
from tests.loss.helpers import CPU, IGNORE, assert_close

ROOT = Path(__file__).resolve().parents[2]
# The per-chunk kernels that run here: "auto" (native when built, else the reference) and the
# reference differentiated with torch.func, which is also the fallback where nothing else runs.
AUTO = available_backends(CPU)[0]
KERNEL_BACKENDS = sorted({"reference", AUTO})


# ---- equality with the specification -------------------------------------------------------

@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("detach", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("per_head", [False, True])
def test_matches_materialised_float32(backend, reduction, detach, bias, per_head):
    inputs = make_linear_inputs(11, 6, 3, 129, per_head=per_head, bias=bias)
    check(inputs, dict(reduction=reduction, detach_teacher=detach, temperature=2.5,
                       kl_weight=0.7), chunk_size=4, backend=backend)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("per_head", [False, True])
def test_matches_materialised_float64(backend, reduction, per_head):
    inputs = make_linear_inputs(9, 5, 2, 33, per_head=per_head, dtype=torch.float64)
    check(inputs, dict(reduction=reduction, detach_teacher=False), rtol=1e-10, chunk_size=4,
          backend=backend)


@pytest.mark.parametrize("n, v", [(1, 1), (1, 5000), (7, 1), (7, 129), (1000, 129), (7, 5000)])
@pytest.mark.parametrize("chunk", [None, 3])
def test_odd_sizes(n, v, chunk):
    inputs = make_linear_inputs(n, 4, 2, v, ignore=n > 1)
    check(inputs, dict(reduction="mean", detach_teacher=False), chunk_size=chunk)


@pytest.mark.slow
def test_n1000_v5000():
    inputs = make_linear_inputs(1000, 8, 2, 5000)
    check(inputs, dict(reduction="none"), chunk_size=96)


@pytest.mark.parametrize("chunk", [1, 2, 5, 7, 8, 1000])
def test_chunk_sizes_divide_or_not(chunk):
    """N = 10: chunks of 1, 2, 5 divide it; 7 and 8 leave a short last chunk; 1000 is one."""
    inputs = make_linear_inputs(10, 5, 3, 17, per_head=True)
    check(inputs, dict(reduction="sum"), chunk_size=chunk)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 40), h=st.integers(1, 9), m=st.integers(1, 5), v=st.integers(1, 70),
       chunk=st.integers(1, 45), per_head=st.booleans(), bias=st.booleans(),
       detach=st.booleans(), reduction=st.sampled_from(["mean", "sum", "none"]),
       seed=st.integers(0, 2**16))
def test_random_shapes_and_options(n, h, m, v, chunk, per_head, bias, detach, reduction, seed):
    inputs = make_linear_inputs(n, h, m, v, per_head=per_head, bias=bias, seed=seed)
    check(inputs, dict(reduction=reduction, detach_teacher=detach), chunk_size=chunk)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_all_rows_ignored_and_empty_batch(reduction):
    hidden, weight, bias, gate, target = make_linear_inputs(5, 3, 2, 7)
    target = torch.full_like(target, IGNORE)
    loss = fused_linear_one_loss(hidden, weight, gate, target, bias=bias, reduction=reduction)
    assert torch.equal(loss, torch.zeros_like(loss))
    grads = torch.autograd.grad(loss.sum(), (hidden, weight, bias, gate))
    assert all(torch.equal(g, torch.zeros_like(g)) for g in grads)
    empty = make_linear_inputs(0, 3, 2, 7)
    check(empty, dict(reduction=reduction))


# every reduction path x hidden kind on the default kernel; the reference kernel once (it is
# differentiated with torch.func per chunk, slow under gradcheck's many calls)
@pytest.mark.parametrize("backend, reduction, per_head", [
    (AUTO, "mean", False), (AUTO, "mean", True), (AUTO, "none", False), (AUTO, "none", True),
    ("reference", "none", True)])
def test_gradcheck_float64(backend, reduction, per_head):
    hidden, weight, bias, gate, target = make_linear_inputs(5, 3, 2, 6, per_head=per_head,
                                                            dtype=torch.float64)

    def fn(h, w, b, g):
        return fused_linear_one_loss(h, w, g, target, bias=b, reduction=reduction,
                                     detach_teacher=False, chunk_size=2, backend=backend)

    assert torch.autograd.gradcheck(fn, (hidden, weight, bias, gate))


def test_return_terms_match_one_loss():
    hidden, weight, bias, gate, target = make_linear_inputs(12, 4, 3, 50)
    for reduction in ("mean", "sum", "none"):
        opts = dict(reduction=reduction, kl_weight=torch.tensor(0.4), return_terms=True)
        got = fused_linear_one_loss(hidden, weight, gate, target, bias=bias, chunk_size=5,
                                    **opts)
        want = one_loss(materialised_logits(hidden, weight, bias), gate, target,
                        backend="reference", **opts)
        assert isinstance(got, ONELossTerms)
        for field in ONELossTerms._fields:
            assert_close(getattr(got, field), getattr(want, field), f"{reduction} {field}")
        assert got.loss.requires_grad and not got.kl.requires_grad


def test_only_requested_gradients_are_computed():
    """Frozen heads (weight without grad) and a detached gate: the rest still matches."""
    hidden, weight, bias, gate, target = make_linear_inputs(8, 4, 2, 20)
    weight.requires_grad_(False)
    loss = fused_linear_one_loss(hidden, weight, gate.detach(), target, bias=bias)
    g_h, g_b = torch.autograd.grad(loss, (hidden, bias))
    spec = one_loss(materialised_logits(hidden, weight, bias), gate.detach(), target)
    s_h, s_b = torch.autograd.grad(spec, (hidden, bias))
    assert_close(g_h, s_h, "grad hidden")
    assert_close(g_b, s_b, "grad bias")
    with torch.no_grad():
        assert not fused_linear_one_loss(hidden, weight, gate, target).requires_grad


@pytest.mark.skipif(not backends.TRITON_INSTALLED, reason="triton is not installed")
def test_triton_kernel_under_interpreter():
    """backend="triton" (Triton's CPU interpreter here; the CUDA default) in the chunk loop."""
    if "triton" not in available_backends(CPU):
        pytest.skip("TRITON_INTERPRET=1 is not set")
    check(make_linear_inputs(6, 4, 2, 40, per_head=True), dict(reduction="none",
                                                               detach_teacher=False),
          chunk_size=4, backend="triton")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("per_head", [False, True])
def test_low_precision_no_worse_than_materialising(dtype, per_head):
    check_low_precision(dtype, CPU, per_head)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("per_head", [False, True])
def test_accumulating_in_the_weights_dtype_costs_one_rounding_per_chunk(dtype, per_head):
    check_low_precision(dtype, CPU, per_head, accum_dtype=dtype)


def test_accum_dtype_float32_is_the_default_exactly():
    inputs = make_linear_inputs(12, 8, 2, 50, dtype=torch.bfloat16)
    hidden, weight, bias, gate, target = inputs
    results = []
    for accum in (None, torch.float32):
        loss = fused_linear_one_loss(hidden, weight, gate, target, bias=bias, chunk_size=4,
                                     accum_dtype=accum)
        results.append((loss, *torch.autograd.grad(loss, (hidden, weight, bias, gate))))
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


# ---- the module ------------------------------------------------------------------------------

def test_module_is_linear_heads_plus_one_loss():
    torch.manual_seed(3)
    heads = FusedLinearONELoss(6, 40, 3, temperature=2.0, chunk_size=4)
    linears = torch.nn.ModuleList(torch.nn.Linear(6, 40) for _ in range(3))
    with torch.no_grad():
        for i, lin in enumerate(linears):
            lin.weight.copy_(heads.weight[i])
            lin.bias.copy_(heads.bias[i])
    hidden = torch.randn(10, 6, requires_grad=True)
    gate = torch.softmax(torch.randn(10, 3), 1)
    target = torch.randint(0, 40, (10,))
    loss = heads(hidden, gate, target, kl_weight=0.5)
    logits = torch.stack([lin(hidden) for lin in linears], 1)
    spec = ONELoss(temperature=2.0)(logits, gate, target, kl_weight=0.5)
    assert_close(loss, spec, "loss")
    assert_close(heads.logits(hidden), logits, "logits")
    g = torch.autograd.grad(loss, (hidden, heads.weight, heads.bias))
    s = torch.autograd.grad(spec, (hidden, *[lin.weight for lin in linears],
                                   *[lin.bias for lin in linears]))
    assert_close(g[0], s[0], "grad hidden")
    assert_close(g[1], torch.stack(s[1:4]), "grad weight")
    assert_close(g[2], torch.stack(s[4:7]), "grad bias")
    bound = 1 / 6 ** 0.5
    assert heads.weight.abs().max() <= bound and heads.bias.abs().max() <= bound
    assert "num_heads=3" in repr(heads)
    assert FusedLinearONELoss(4, 5, 2, bias=False).bias is None


def test_module_under_autocast():
    """Under CPU autocast (bf16) a bf16 trunk output meets the float32 heads: hidden, weight
    and bias are cast as autocast's linear would cast them."""
    heads = FusedLinearONELoss(8, 30, 2, chunk_size=8)
    trunk = torch.nn.Linear(5, 8)
    x = torch.randn(16, 5)
    gate = torch.softmax(torch.randn(16, 2), 1)
    target = torch.randint(0, 30, (16,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hidden = trunk(x)
        assert hidden.dtype == torch.bfloat16
        loss = heads(hidden, gate, target)
        spec = one_loss(heads.logits(hidden), gate, target)
    torch.testing.assert_close(loss, spec, rtol=1e-2, atol=0)
    loss.backward()
    assert heads.weight.grad.dtype == torch.float32 and trunk.weight.grad.dtype == torch.float32


# ---- validation ------------------------------------------------------------------------------

def test_validation_names_the_argument():
    hidden, weight, bias, gate, target = make_linear_inputs(4, 3, 2, 5)
    cases = [
        (dict(hidden=hidden[:, :2]), ValueError, "hidden must have shape"),
        (dict(hidden=hidden[0]), ValueError, "hidden must be a tensor"),
        (dict(weight=weight[0]), ValueError, "weight must be a 3-D tensor"),
        (dict(hidden=hidden.double()), TypeError, "hidden and weight must share"),
        (dict(bias=bias[:, :3]), ValueError, "bias must be None or a tensor of shape"),
        (dict(bias=bias.double()), TypeError, "bias must have weight's dtype"),
        (dict(chunk_size=0), ValueError, "chunk_size must be None or a positive int"),
        (dict(gate=gate[:3]), ValueError, "gate must have shape"),
        (dict(target=torch.full_like(target, 5)), ValueError, "target values must be in"),
        (dict(reduction="avg"), ValueError, "reduction must be one of"),
        (dict(temperature=0.0), ValueError, "temperature must be finite and > 0"),
        (dict(backend="cuda-magic"), ValueError, "backend must be 'auto' or one of"),
        (dict(kl_weight=torch.ones(1, requires_grad=True)), ValueError, "kl_weight"),
        (dict(accum_dtype=torch.float16), ValueError, "accum_dtype must be None, "),
    ]
    base = dict(hidden=hidden, weight=weight, gate=gate, target=target, bias=bias)
    for change, error, message in cases:
        args = {**base, **change}
        with pytest.raises(error, match=re.escape(message)):
            fused_linear_one_loss(args.pop("hidden"), args.pop("weight"), args.pop("gate"),
                                  args.pop("target"), **args)
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        FusedLinearONELoss(4, 0, 2)
    with pytest.raises(ValueError, match="accum_dtype must be None, "):
        FusedLinearONELoss(4, 5, 2, accum_dtype=torch.bfloat16)  # float32 weights


# ---- chunk-size rule -------------------------------------------------------------------------

def test_auto_chunk_rows_follows_the_documented_rule():
    # the GPU shape, bf16: full logits 16 GiB / 8 = 2 GiB = the cap -> 2048 rows
    assert auto_chunk_rows(16384, 4, 131072, torch.bfloat16) == 2048
    # the CPU memory test's shape, float32: 512 MiB / 8 = 64 MiB -> 256 rows
    assert auto_chunk_rows(2048, 4, 16384, torch.float32) == 256
    # small problems: at least MIN_CHUNK_BYTES per chunk, so a single chunk here
    assert auto_chunk_rows(100, 3, 1000, torch.float32) == 100
    assert auto_chunk_rows(0, 3, 1000, torch.float32) == 1
    for n, m, v, dtype in [(16384, 4, 131072, torch.bfloat16), (10**6, 8, 262144, torch.float32),
                           (4096, 4, 32768, torch.float16), (7, 1, 1, torch.float64)]:
        rows = auto_chunk_rows(n, m, v, dtype)
        row_bytes = m * v * torch.empty((), dtype=dtype).element_size()
        assert rows & (rows - 1) == 0 or rows == n, "a power of two (or all rows)"
        assert rows * row_bytes <= max(MAX_CHUNK_BYTES, row_bytes)
        if n * row_bytes >= MIN_CHUNKS * MIN_CHUNK_BYTES:
            assert rows * MIN_CHUNKS <= n, "at least MIN_CHUNKS chunks for large problems"


# ---- torch.compile ---------------------------------------------------------------------------

@pytest.mark.slow  # inductor's C++ codegen: ~30 s on the 2-core VM for the first case
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_compile_fullgraph_matches_eager(reduction):
    """torch.compile(fullgraph=True) (inductor) over a function calling it: one graph, no
    break, no recompile when the kl_weight tensor changes value, eager's numbers. With "none"
    the compiled backward calls the recompute operator."""
    from torch._dynamo.testing import CompileCounterWithBackend
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    counter = CompileCounterWithBackend("inductor")
    hidden, weight, bias, gate, target = make_linear_inputs(10, 4, 2, 24, per_head=True)

    def fn(h, w, b, g, y, klw):
        terms = fused_linear_one_loss(torch.tanh(h), w, g, y, bias=b, kl_weight=klw,
                                      reduction=reduction, chunk_size=4, return_terms=True)
        return terms.loss.sum() * 2.0, terms.kl

    compiled = torch.compile(fn, backend=counter, fullgraph=True)
    leaves = (hidden, weight, bias, gate)
    for value in (0.3, 0.9):
        klw = torch.tensor(value)
        loss_c, kl_c = compiled(*leaves, target, klw)
        loss_e, kl_e = fn(*leaves, target, klw)
        torch.testing.assert_close(loss_c, loss_e, rtol=1e-6, atol=0)
        torch.testing.assert_close(kl_c, kl_e, rtol=1e-6, atol=0)
        for a, b in zip(torch.autograd.grad(loss_c, leaves), torch.autograd.grad(loss_e, leaves),
                        strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert counter.frame_count == 1, "recompiled when kl_weight changed value"
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])


def test_operators_pass_opcheck():
    """torch.library.opcheck: schema, fake (shape) functions and autograd registration agree
    with the real implementations. (With the reference kernel opcheck's schema check fails:
    its dispatch mode cannot see through torch.func's wrappers; the kernel is exercised by
    every other test.)"""
    hidden, weight, bias, gate, target = make_linear_inputs(6, 3, 2, 9)
    klw = torch.ones(1, dtype=torch.float64)
    common = (3.0, False, IGNORE)
    utils = ("test_schema", "test_autograd_registration", "test_faketensor",
             "test_aot_dispatch_dynamic")
    if AUTO == "reference":
        utils = utils[1:]
    for reduction in ("mean", "none"):
        args = (hidden, weight, bias, gate, target, klw, *common, reduction, 4, AUTO,
                [True, True, True, True], torch.float32)
        torch.library.opcheck(fused_linear_op.forward_op, args, test_utils=utils)
    grad_rows = torch.randn(6)
    torch.library.opcheck(fused_linear_op.backward_op,
                          (hidden.detach(), weight.detach(), None, gate.detach(), target, klw,
                           grad_rows, *common, 4, AUTO, [True, True, False, True],
                           torch.float32),
                          test_utils=utils)


# ---- the guide's example (docs/large-vocab.md) ----------------------------------------------

def test_guide_example_runs_and_learns(capsys):
    guide = (ROOT / "docs" / "large-vocab.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", guide, flags=re.S)
    assert len(blocks) == 1, "the guide has one python example"
    exec(compile(blocks[0], "docs/large-vocab.md", "exec"), {})
    out = capsys.readouterr().out
    losses = [float(x) for x in re.findall(r"step \d+ loss ([0-9.]+)", out)]
    assert len(losses) >= 3 and losses[-1] < losses[0], out
