"""fused_linear_one_loss on CUDA (``-m gpu``; skipped without a GPU): the Triton kernel per
chunk, bf16/fp16 with float32-output GEMMs, CUDA-graph replay, and the memory ratio."""

from __future__ import annotations

import warnings

import pytest
import torch

from benchmarks.fused_linear_memory import make_inputs, peak_cuda_extra_mib
from one_fast import fused_linear_one_loss
from one_fast.loss import fused_linear_op
from tests.loss.fused_linear_helpers import check, check_low_precision, make_linear_inputs

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
CUDA = torch.device("cuda")


def test_fp32_output_gemms_are_used():
    """torch >= 2.8 has bf16 x bf16 -> float32 GEMMs on CUDA: the accumulators use them."""
    assert fused_linear_op._fp32_output_gemms("cuda")
    for per_head in (False, True):  # addmm/mm and baddbmm/bmm
        hidden, weight, bias, gate, target = make_linear_inputs(
            16, 8, 2, 64, per_head=per_head, dtype=torch.bfloat16, device=CUDA)
        with warnings.catch_warnings():
            # a refused float32-output GEMM warns (and falls back): fail here instead
            warnings.filterwarnings("error", message="fused_linear_one_loss")
            loss = fused_linear_one_loss(hidden, weight, gate, target, bias=bias, chunk_size=8)
            torch.autograd.grad(loss, (hidden, weight))
    assert fused_linear_op._fp32_output_gemms("cuda")


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("per_head", [False, True])
@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_matches_materialised_float32_gpu(reduction, per_head, backend):
    inputs = make_linear_inputs(37, 16, 3, 1000, per_head=per_head, device=CUDA)
    check(inputs, dict(reduction=reduction, detach_teacher=False), chunk_size=8,
          backend=backend)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("per_head", [False, True])
def test_low_precision_gpu(dtype, per_head):
    check_low_precision(dtype, CUDA, per_head)


def test_cuda_graph_replay_matches_eager():
    """mode="reduce-overhead" (CUDA graphs) replays forward and backward with new values."""
    torch._dynamo.reset()

    def fn(h, w, b, g, y, klw):
        return fused_linear_one_loss(h, w, g, y, bias=b, kl_weight=klw, chunk_size=64)

    compiled = torch.compile(fn, mode="reduce-overhead", fullgraph=True)
    for step in range(4):
        hidden, weight, bias, gate, target = make_linear_inputs(200, 32, 3, 500, seed=step,
                                                                device=CUDA)
        leaves = (hidden, weight, bias, gate)
        klw = torch.tensor(0.25 * (step + 1), device=CUDA)
        loss_c = compiled(*leaves, target, klw)
        grads_c = torch.autograd.grad(loss_c, leaves)
        loss_e = fn(*leaves, target, klw)
        grads_e = torch.autograd.grad(loss_e, leaves)
        torch.testing.assert_close(loss_c, loss_e, rtol=1e-6, atol=0)
        for a, b in zip(grads_c, grads_e, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_peak_memory_four_times_below_materialised():
    """(N, H, m, V) = (4096, 1024, 4, 32768) bf16: the fused path's peak above the inputs is at
    most a quarter of materialising the logits (linear heads + the fused ONE loss)."""
    inputs = make_inputs(4096, 1024, 4, 32768, torch.bfloat16, CUDA)
    fused = peak_cuda_extra_mib("fused-linear", inputs)
    materialised = peak_cuda_extra_mib("linear+fused", inputs)
    assert 4 * fused <= materialised, f"fused {fused:.0f} MiB, materialised {materialised:.0f}"
