"""Checks specific to the native (C++/CUDA) backend; its numerics against the reference over the
shared grid live in test_fused_backends.py, which picks the backend up once it is built.

* the extension is built and registered wherever a C++ compiler exists (fails, not skips: CI
  must prove that ``pip install --no-build-isolation -e .`` builds it);
* the CUDA source compiles with this machine's nvcc (compile only, sm_90, registers and spills
  printed per kernel), and the binding's CUDA branch compiles against torch's headers;
* the CPU implementation: chunked online softmax and lane merges at odd chunk sizes, exact
  bf16/fp16 conversions, mixed logits/gate dtypes, op registration (opcheck), hooks;
* GPU (``-m gpu``, skipped without CUDA): every kernel variant against the reference in
  fp32/bf16/fp16/fp64, native against triton, CUDA-graph capture, no host synchronisation.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

import one_fast.loss as loss_pkg
from benchmarks import native_ptxas_check
from one_fast import available_backends, one_loss
from one_fast.loss import native
from one_fast.loss.fused_op import FUSED_SCHEMA
from tests.loss.helpers import CPU, IGNORE, assert_close, make_inputs

ROOT = Path(__file__).resolve().parents[2]
KERNELS = ROOT / "kernels"

needs_native_cpu = pytest.mark.skipif(not native.HAS_CPU, reason="native extension not built")
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")


def compare(backend, other, logits, gate, target, rtol, **opts):
    """Loss, terms and both gradients of two backends, per row (a random cotangent).

    The gate gradient is held to at least one rounding of the gate's dtype: both round the
    float32 value once, and float32 values a hair apart may round to neighbouring values."""
    results = []
    for b in (backend, other):
        t = one_loss(logits, gate, target, backend=b, reduction="none", return_terms=True,
                     **opts)
        cot = torch.randn(t.loss.shape, generator=torch.Generator().manual_seed(1),
                          dtype=t.loss.dtype).to(t.loss.device)
        grads = torch.autograd.grad((t.loss * cot).sum(), (logits, gate))
        results.append((t.loss, t.ce_per_branch, t.ce_ensemble, t.kl_per_branch, *grads))
    names = ("loss", "ce branch", "ce ensemble", "kl", "grad logits", "grad gate")
    gate_rtol = max(rtol, torch.finfo(gate.dtype).eps)
    for a, b, name in zip(*results, names, strict=True):
        assert_close(a, b, f"{backend} vs {other}: {name}", gate_rtol if name == "grad gate"
                     else rtol)


# ---- build and registration -----------------------------------------------------------------

def test_extension_is_built_and_registered():
    """Wherever a C++ compiler exists the CPU variant must be built (so CI proves it builds)."""
    if os.environ.get("ONE_FAST_NATIVE") == "0":
        pytest.skip("ONE_FAST_NATIVE=0: the extension was deliberately not built")
    if _compiler() is None:
        pytest.skip("no C++ compiler on this machine: the extension is optional")
    assert native.BUILT, (f"one_fast._native is not importable ({native.LOAD_ERROR}); install "
                          "with `pip install --no-build-isolation -e .`")
    assert native.HAS_CPU
    assert loss_pkg.unavailable_reason("native", CPU) is None
    assert available_backends("cpu")[0] == "native"  # measured faster than the reference
    assert loss_pkg.resolve_backend("auto", CPU).row_terms is native.row_terms


@needs_native_cpu
def test_schema_is_the_fused_contract():
    assert str(native.op.default._schema) == "one_fast_native::one_loss" + FUSED_SCHEMA


@needs_native_cpu
@pytest.mark.parametrize("compute_grad", [True, False])
def test_opcheck(compute_grad):
    """Schema, fake (meta) implementation, autograd registration and AOT dispatch."""
    logits, gate, target = make_inputs(5, 3, 17)
    if not compute_grad:
        logits, gate = logits.detach(), gate.detach()
    w = torch.tensor([0.7], dtype=torch.float64)
    args = (logits, gate, target, w, 2.0, False, IGNORE, compute_grad)
    torch.library.opcheck(native.op.default, args)


@needs_native_cpu
def test_op_rejects_bad_arguments():
    logits, gate, target = (t.detach() for t in make_inputs(2, 3, 5))
    w = torch.tensor([1.0], dtype=torch.float64)
    wide = torch.randn(2, 9, 5)
    with pytest.raises(RuntimeError, match="supports 1 to 8 branches"):
        native.op(wide, torch.full((2, 9), 1 / 9), target, w, 3.0, True, IGNORE, False)
    with pytest.raises(RuntimeError, match="int64"):
        native.op(logits, gate, target.int(), w, 3.0, True, IGNORE, False)
    with pytest.raises(RuntimeError, match="float64"):
        native.op(logits, gate, target, w.float(), 3.0, True, IGNORE, False)
    with pytest.raises(RuntimeError, match="float32, float64, bfloat16 or float16"):
        native.op(logits, gate.to(torch.float8_e4m3fn), target, w, 3.0, True, IGNORE, False)


# ---- CUDA source: compile only --------------------------------------------------------------

@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not found")
def test_cuda_source_compiles_with_nvcc():
    """nvcc -arch=sm_90 -Xptxas -v -c: the torch-free kernels compile, and no kernel that the
    dispatcher picks for m <= 4 spills. (CI prints the register table for sm_90 and sm_80 with
    ``python -m benchmarks.native_ptxas_check``; the test suite's output stays clean.)"""
    kernels = native_ptxas_check.compile_report(90)
    assert len(kernels) == 15, "expected 15 kernel instantiations (see the launcher)"
    small_m = [k for k in kernels if k.picked_for_small_m]
    assert len(small_m) == 9, [k.name for k in small_m]  # fp32 VEC {4, 1}, 16-bit {8, 4, 1}, fp64
    assert native_ptxas_check.small_m_spills(kernels) == []


@pytest.mark.skipif(_compiler() is None, reason="no C++ compiler")
def test_binding_cuda_branch_compiles(tmp_path):
    """The binding's CUDA path (ONE_FAST_WITH_CUDA) needs no CUDA header: check it against
    this torch's headers, so a CPU-only machine catches errors a CUDA build would hit."""
    from torch.utils import cpp_extension

    includes = [*cpp_extension.include_paths(), sysconfig.get_paths()["include"]]
    cmd = [_compiler(), "-std=c++17", "-fsyntax-only", "-fopenmp", "-DONE_FAST_WITH_CUDA=1",
           f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
           *(f"-isystem{p}" for p in includes), str(KERNELS / "binding" / "one_loss_op.cpp")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]


# ---- CPU implementation ---------------------------------------------------------------------

@needs_native_cpu
@pytest.mark.parametrize("chunk", [1, 7, 64, 512])
@pytest.mark.parametrize("c", [5, 130, 2049])
def test_chunked_online_softmax_and_lane_merges(monkeypatch, chunk, c):
    """Chunks smaller than C run the running-max rescale and the merge of the 4 lanes' partial
    states (the GPU's thread merge); float64 pins the algebra to ~1e-12."""
    monkeypatch.setattr(native, "BLOCK_C_OVERRIDE", chunk)
    for dtype, rtol in ((torch.float32, 1e-5), (torch.float64, 1e-11)):
        logits, gate, target = make_inputs(7, 3, c, dtype=dtype)
        compare("native", "reference", logits, gate, target, rtol, temperature=2.5,
                kl_weight=0.6, detach_teacher=False)
    assert torch.ops.one_fast_native._cpu_chunk(0) == 512  # the hook restored the default


@needs_native_cpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_conversions_are_exact(dtype):
    """Every finite bf16/fp16 value is read exactly, and gradients round to nearest even like
    torch: the low-precision op equals the float32 op on the widened inputs, rounded."""
    bits = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16)
    values = bits.view(dtype)
    values = values[torch.isfinite(values)]
    values = values[torch.randperm(values.numel(), generator=torch.Generator().manual_seed(0))]
    gen = torch.Generator().manual_seed(1)
    c = 256
    n = values.numel() // c
    # rows 0..n-1: branch 0 holds every finite value once, branch 1 ordinary logits; then 64
    # rows of ordinary logits only, which must come out finite (so the test is not vacuous).
    every = torch.stack([values[: n * c].reshape(n, c),
                         (3 * torch.randn(n, c, generator=gen)).to(dtype)], 1)
    plain = (3 * torch.randn(64, 2, c, generator=gen)).to(dtype)
    logits = torch.cat([every, plain])
    gate = torch.softmax(torch.randn(n + 64, 2, generator=gen), 1).to(dtype)
    target = torch.randint(0, c, (n + 64,), generator=gen)
    w = torch.tensor([0.8], dtype=torch.float64)
    low = native.op(logits, gate, target, w, 3.0, False, IGNORE, True)
    wide = native.op(logits.float(), gate.float(), target, w, 3.0, False, IGNORE, True)
    for i in range(4):  # terms: identical float32 arithmetic on identical values
        torch.testing.assert_close(low[i], wide[i], rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(low[4], wide[4].to(dtype), rtol=0, atol=0, equal_nan=True)
    # the gate's gradient stays in float32 (rounded to the gate's dtype once, by autograd)
    torch.testing.assert_close(low[5], wide[5], rtol=0, atol=0, equal_nan=True)
    assert torch.isfinite(low[4][n:]).all() and torch.isfinite(low[5][n:]).all()
    assert (low[4][n:] != 0).float().mean() > 0.5  # subnormal and normal gradients alike


@needs_native_cpu
@pytest.mark.parametrize("dtype,gate_dtype,rtol", [
    (torch.bfloat16, torch.float32, 1e-2), (torch.float32, torch.bfloat16, 1e-5),
    (torch.float16, torch.float64, 1e-2), (torch.float64, torch.float32, 1e-11)])
def test_gate_dtype_may_differ(dtype, gate_dtype, rtol):
    """The gate is read and its gradient written in its own dtype."""
    logits, gate, target = make_inputs(9, 3, 40, dtype=dtype, gate_dtype=gate_dtype)
    compare("native", "reference", logits, gate, target, rtol, kl_weight=0.5,
            detach_teacher=False)


@needs_native_cpu
def test_rows_split_across_threads_bitwise():
    logits, gate, target = (t.detach() for t in make_inputs(300, 3, 50))
    w = torch.tensor([1.0], dtype=torch.float64)
    threads = torch.get_num_threads()
    try:
        outs = []
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            outs.append(native.op(logits, gate, target, w, 3.0, False, IGNORE, True))
    finally:
        torch.set_num_threads(threads)
    for other in outs[1:]:
        for a, b in zip(outs[0], other, strict=True):
            assert torch.equal(a, b)


@needs_native_cpu
def test_more_than_eight_branches_is_a_clear_error_and_auto_moves_on():
    logits, gate, target = make_inputs(5, 9, 20)
    with pytest.raises(ValueError, match="'native' takes at most 8 branches, got .* m = 9"):
        one_loss(logits, gate, target, backend="native")
    assert loss_pkg.resolve_backend("auto", CPU, 9).name == "reference"
    assert loss_pkg.resolve_backend("auto", CPU, 8).row_terms is native.row_terms


@needs_native_cpu
def test_out_of_range_target_row_is_nan():
    logits, gate, target = (t.detach() for t in make_inputs(4, 2, 10, ignore="none"))
    target[2] = 10
    out = native.op(logits, gate, target, torch.tensor([1.0], dtype=torch.float64), 3.0, True,
                    IGNORE, True)
    for t in (out[0], out[1], out[2], out[4], out[5]):
        assert torch.isnan(t[2]).all() and torch.isfinite(t[[0, 1, 3]]).all()


@needs_native_cpu
@pytest.mark.slow
def test_inductor_compiles_the_op():
    """Inductor (not only aot_eager) calls the C++ op as an extern kernel, forward and backward."""
    torch._dynamo.reset()

    def fn(z, g, y, w):
        return one_loss(z, g, y, kl_weight=w, detach_teacher=False, backend="native")

    compiled = torch.compile(fn, backend="inductor", fullgraph=True)
    logits, gate, target = make_inputs(9, 3, 40)
    w = torch.tensor(0.4)
    got = compiled(logits, gate, target, w)
    want = fn(logits, gate, target, w)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    for a, b in zip(torch.autograd.grad(got, (logits, gate)),
                    torch.autograd.grad(want, (logits, gate)), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


# ---- GPU ------------------------------------------------------------------------------------

def _require_native_cuda():
    if not native.HAS_CUDA:
        if shutil.which("nvcc") is not None and native.BUILT:
            pytest.fail("CUDA and nvcc are present but the native extension has no CUDA "
                        "kernels: reinstall with `pip install --no-build-isolation -e .`")
        pytest.skip("native extension built without CUDA")


# Shapes chosen to reach every launcher path: warp-per-row and block-per-row groups, every
# (VEC, MAXM) instantiation, C not a multiple of the vector, grid-stride rows.
GPU_CASES = [
    # N,    m, C,     T,   kl_weight, detach
    (1,     1, 2,     1.0, 0.0, True),
    (7,     3, 10,    3.0, 0.3, False),
    (129,   3, 100,   3.0, 1.0, False),   # VEC 4 (bf16: C % 8 != 0 -> VEC 4, MAXM 4)
    (129,   5, 100,   4.5, 1.0, True),    # MAXM 8
    (7,     3, 1000,  3.0, 1.0, False),   # few rows, wide: block-per-row groups
    (3,     8, 5000,  1.0, 0.3, False),   # 256-thread groups, many vectors per thread
    (2000,  3, 100,   3.0, 1.0, True),    # many rows, warp groups
    (9,     4, 1001,  2.0, 0.7, False),   # odd C: scalar loads
]


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 1e-5), (torch.float64, 1e-11),
                                        (torch.bfloat16, 2e-2), (torch.float16, 2e-3)])
def test_gpu_matches_reference(dtype, rtol):
    """Every kernel variant against the reference on the same (rounded) inputs; for bf16/fp16
    the reference also rounds its gradients to the input dtype."""
    _require_native_cuda()
    cuda = torch.device("cuda")
    for n, m, c, temperature, kl_weight, detach in GPU_CASES:
        logits, gate, target = make_inputs(n, m, c, dtype=dtype, device=cuda)
        compare("native", "reference", logits, gate, target, rtol, temperature=temperature,
                kl_weight=kl_weight, detach_teacher=detach)


@pytest.mark.gpu
@gpu
def test_gpu_unaligned_and_strided_views():
    """A view one element into its storage (no vector loads), and strided rows/branches."""
    _require_native_cuda()
    cuda = torch.device("cuda")
    for dtype in (torch.float32, torch.bfloat16):
        base, gate, target = make_inputs(33, 3, 129, dtype=dtype, device=cuda)
        logits = base[:, :, 1:]  # C = 128, but the data pointer is off by one element
        compare("native", "reference", logits, gate, target, 1e-5 if dtype == torch.float32
                else 2e-2, detach_teacher=False)
        wide = torch.randn(33, 6, 136, device=cuda, dtype=dtype)
        logits = wide[:, ::2, 8:].detach().requires_grad_()  # aligned, strided branches
        compare("native", "reference", logits, gate, target, 1e-5 if dtype == torch.float32
                else 2e-2, detach_teacher=False)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_gpu_native_matches_triton(dtype, rtol):
    _require_native_cuda()
    if "triton" not in available_backends("cuda"):
        pytest.skip("triton backend not available")
    cuda = torch.device("cuda")
    for n, m, c, temperature, kl_weight, detach in GPU_CASES:
        logits, gate, target = make_inputs(n, m, c, dtype=dtype, device=cuda)
        compare("native", "triton", logits, gate, target, rtol, temperature=temperature,
                kl_weight=kl_weight, detach_teacher=detach)


@pytest.mark.gpu
@gpu
def test_gpu_cuda_graph_replay_and_no_host_sync():
    """The op launches without host synchronisation and replays in a CUDA graph, reading the
    kl_weight tensor on the device at every replay."""
    _require_native_cuda()
    cuda = torch.device("cuda")
    logits, gate, target = (t.detach() for t in make_inputs(64, 3, 100, device=cuda))
    w = torch.tensor([0.25], dtype=torch.float64, device=cuda)
    args = (logits, gate, target, w, 3.0, False, IGNORE, True)
    native.op(*args)  # warm-up outside capture
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        native.op(*args)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(stream), torch.cuda.graph(graph):
        captured = native.op(*args)
    torch.cuda.current_stream().wait_stream(stream)
    for step in range(3):
        logits.copy_(torch.randn_like(logits))
        w.fill_(0.5 * (step + 1))
        graph.replay()
        eager = native.op(*args)
        for a, b in zip(captured, eager, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v", "-s"]))
