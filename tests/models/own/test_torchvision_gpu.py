"""branch() on torchvision's real models, on CUDA (run by benchmarks/gpu_check.sh, whose machines
have torchvision; its wheel does not load beside the CPU torch of CI): batched == loop, the
student back as torchvision's class, and a ONE training step."""

from __future__ import annotations

import copy

import pytest
import torch

from one_fast import ONELoss
from one_fast.export import extract_branch
from one_fast.models import branch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.usefixtures("no_tf32"),  # exact float32: the paths differ in summation order
]
if not torch.cuda.is_available():  # before importing torchvision: a CPU torch breaks it
    pytest.skip("needs a CUDA device", allow_module_level=True)
try:
    from torchvision import models
except Exception as err:  # ImportError, or torchvision built for another torch
    pytest.skip(f"needs torchvision ({type(err).__name__}: {err})", allow_module_level=True)

# name -> (where the branches start, input size)
CASES = {
    "resnet50": ("layer4", 64),
    "mobilenet_v3_large": ("features.13", 64),
    "efficientnet_b0": ("features.7", 64),  # stochastic depth in the branches
    "convnext_tiny": ("features.7", 64),  # stochastic depth, LayerNorm
    "vit_b_16": ("encoder.layers.encoder_layer_10", 224),  # tokens: the gate pools them
}


@pytest.mark.parametrize("name", CASES)
def test_torchvision_model(name):
    at, size = CASES[name]
    factory = getattr(models, name)
    net = branch(lambda: factory(num_classes=10), at=at, num_branches=3).cuda()
    x = torch.randn(4, 3, size, size, device="cuda")
    net.eval()
    with torch.no_grad():
        batched = net(x)
        looped = copy.deepcopy(net)
        looped.batched = False
        for got, expected in zip(batched, looped(x), strict=True):
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
        student = extract_branch(net, 2)
        assert type(student) is type(factory())
        fresh = factory(num_classes=10).cuda()
        fresh.load_state_dict(student.state_dict(), strict=True)
        torch.testing.assert_close(fresh.eval()(x), batched[0][:, 2], rtol=1e-4, atol=1e-5)
    net.train()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
    logits, gate = net(x)
    loss = ONELoss()(logits, gate, torch.randint(0, 10, (4,), device="cuda"))
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and all(
        p.grad is not None for p in net.parameters() if p.requires_grad)
