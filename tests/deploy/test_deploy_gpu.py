"""Extraction and export of networks that live on a CUDA device."""

from __future__ import annotations

import pytest
import torch

from one_fast.deploy import (
    InputSpec,
    describe,
    export_module,
    extract_branch,
    extract_ensemble,
    load_exported,
)
from one_fast.methods import create_method
from one_fast.models import create_model

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.usefixtures("no_tf32"),  # exact float32: paths differ only in summation order
]


@pytest.mark.parametrize("arch, options", [("resnet", dict(depth=8)),
                                           ("resnext29", dict(depth=11, cardinality=2,
                                                              base_width=4, widen_factor=1))])
def test_cuda_network_members_and_ensemble(arch, options):
    model = create_model(arch, num_classes=10, num_branches=3, **options).cuda()
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, 16, 16, device="cuda"))
    model.eval()
    x = torch.randn(5, 3, 16, 16, device="cuda")
    with torch.no_grad():
        logits, gate = model(x)
        for i in range(3):
            student = extract_branch(model, i)
            assert next(student.parameters()).is_cuda
            torch.testing.assert_close(student(x), logits[:, i], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(extract_ensemble(model)(x),
                                   torch.einsum("nm,nmc->nc", gate, logits),
                                   rtol=1e-4, atol=1e-4)


def test_a_cuda_student_exports_from_the_cpu(tmp_path):
    model = create_model("resnet", num_classes=10, num_branches=3, depth=8).cuda().eval()
    student = extract_branch(model, 1).cpu()
    spec = InputSpec("toy", 10, 3, 16, 16, (0.5,) * 3, (0.25,) * 3)
    meta = describe(student, 1, create_method("one"), spec)
    export_module(student, "pt2", tmp_path / "s.pt2", meta, torch.randn(4, 3, 16, 16))
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(load_exported(tmp_path / "s.pt2").run(x), student(x))
