"""Every arch on CUDA: cuDNN's grouped convolutions agree with the per-branch path (float32,
channels_last too), bf16 autocast stays close, and the model compiles."""

from __future__ import annotations

import pytest
import torch

from .arch_cases import ARCH_NAMES, SMALL, small_model

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.usefixtures("no_tf32"),  # exact float32: paths differ only in summation order
]


def cuda_inputs(arch, n=4):
    size = SMALL[arch][1]
    return torch.randn(n, 3, size, size, device="cuda")


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_batched_matches_per_branch_on_cuda(arch, channels_last):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = small_model(arch, 3).cuda().to(memory_format=fmt).eval()
    x = cuda_inputs(arch).to(memory_format=fmt)
    with torch.no_grad():
        batched = model(x)[0]
        model.batched = False
        looped = model(x)[0]
    torch.testing.assert_close(batched, looped, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_bf16_autocast_close_to_float32(arch):
    model = small_model(arch, 3).cuda().eval()
    x = cuda_inputs(arch)
    with torch.no_grad():
        want = model(x)[0]
        with torch.autocast("cuda", torch.bfloat16):
            got = model(x)[0].float()
    scale = want.abs().max()
    assert (got - want).abs().max() <= 0.05 * scale, (got - want).abs().max()


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_compiles_without_graph_breaks(arch):
    model = small_model(arch, 3).cuda().eval()
    x = cuda_inputs(arch)
    torch._dynamo.reset()  # every arch recompiles the shared forward code: start clean
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x)[0], model(x)[0], rtol=1e-4, atol=1e-5)
