"""Bad input gets a clear error naming the argument (shared by every backend)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from one_fast import ONELoss, available_backends, one_loss
from tests.host_reads import HostReadCounter


def good(n=4, m=3, c=5):
    return torch.randn(n, m, c), torch.softmax(torch.randn(n, m), 1), torch.randint(0, c, (n,))


@pytest.mark.parametrize("mutate,exc,match", [
    (lambda z, g, t: (z[0], g, t), ValueError, "logits must be a 3-D"),
    (lambda z, g, t: (z.long(), g, t), TypeError, "logits must be floating"),
    (lambda z, g, t: (z, g[:, :2], t), ValueError, "gate must have shape"),
    (lambda z, g, t: (z, g[0], t), ValueError, "gate must be a 2-D"),
    (lambda z, g, t: (z, g[:3], t), ValueError, "gate must have shape"),
    (lambda z, g, t: (z, (g > 0.3).long(), t), TypeError, "gate must be floating"),
    (lambda z, g, t: (z, g, t[:3]), ValueError, "target must have N = 4"),
    (lambda z, g, t: (z, g, t.view(2, 2)), ValueError, "target must be a 1-D"),
    (lambda z, g, t: (z, g, t.float()), TypeError, "target must hold integer"),
    (lambda z, g, t: (z, g, torch.tensor([0, 1, 5, 2])), ValueError, r"target values .*found 5"),
    (lambda z, g, t: (z, g, torch.tensor([0, -1, 2, 2])), ValueError, r"target values .*found -1"),
])
def test_bad_tensors(mutate, exc, match):
    z, g, t = mutate(*good())
    with pytest.raises(exc, match=match):
        one_loss(z, g, t)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(temperature=0.0), ValueError, "temperature must be finite and > 0"),
    (dict(temperature=-1.0), ValueError, "temperature"),
    (dict(temperature=float("inf")), ValueError, "temperature"),
    (dict(temperature=float("nan")), ValueError, "temperature"),
    (dict(temperature=torch.tensor(3.0)), TypeError, "temperature must be a Python number"),
    (dict(reduction="avg"), ValueError, "reduction must be one of"),
    (dict(backend="cuda-magic"), ValueError, "backend must be 'auto' or one of"),
    (dict(kl_weight=float("nan")), ValueError, "kl_weight"),
    (dict(kl_weight=torch.ones(2)), ValueError, "kl_weight"),
])
def test_bad_options(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        one_loss(*good(), **kwargs)


def test_ignore_index_is_accepted_outside_class_range():
    z, g, _ = good()
    t = torch.tensor([0, -100, 4, -100])
    assert torch.isfinite(one_loss(z, g, t))
    assert torch.isfinite(ONELoss(ignore_index=7)(z, g, torch.tensor([7, 1, 2, 3])))


def _inputs(device, target=None):
    z = torch.randn(8, 3, 10, device=device, requires_grad=True)
    g = torch.softmax(torch.randn(8, 3, device=device), 1).requires_grad_()
    t = torch.randint(0, 10, (8,), device=device) if target is None else target
    return z, g, t, torch.tensor(0.5, device=device)


def _forward_backward(inputs, backend="reference"):
    z, g, t, w = inputs
    one_loss(z, g, t, kl_weight=w, backend=backend).backward()


def test_target_check_off_the_cpu_reads_nothing_back():
    """Off the CPU the target check is a device-side assertion, not a host read (a sync per
    step). The meta device runs the same code path as CUDA, on this machine."""
    with HostReadCounter() as reads:
        _forward_backward(_inputs(torch.device("meta")))
    assert reads.total == 0, dict(reads.counts)
    assert reads.ops["aten::_assert_async"] == 1


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("backend", ["reference", "triton", "native"])
def test_eager_loss_reads_nothing_back_on_cuda(backend):
    if backend not in available_backends("cuda"):
        pytest.skip(f"{backend} backend not available on CUDA")
    inputs = _inputs("cuda")
    _forward_backward(inputs, backend)  # first call: kernel compilation and caches
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any synchronising call raises (copies included)
    try:
        with HostReadCounter() as reads:
            _forward_backward(inputs, backend)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert reads.total == 0, dict(reads.counts)


@pytest.mark.gpu
@cuda
def test_bad_target_on_cuda_is_a_device_side_assertion():
    # A failed device-side assertion ends the process's CUDA context: run it in a child.
    code = ("import torch; from tests.loss.test_validation import _forward_backward, _inputs; "
            "_forward_backward(_inputs('cuda', torch.full((8,), 10, device='cuda'))); "
            "torch.cuda.synchronize()")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300, cwd=Path(__file__).resolve().parents[2])
    assert result.returncode != 0
    assert "device-side assert" in result.stderr, result.stderr[-2000:]
