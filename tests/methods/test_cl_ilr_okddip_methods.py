"""The cl_ilr and okddip methods: their losses, ensembles, students, and a compiled step."""

from __future__ import annotations

import pytest
import torch

from one_fast import cl_ilr_loss, okddip_loss
from one_fast.methods import METHODS, CLILRMethod, OKDDipMethod, create_method
from one_fast.models import create_model


def _outputs(m=4, n=6, c=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, m, c, generator=g).requires_grad_()
    return logits, torch.full((n, m), 1.0 / m), torch.randint(0, c, (n,), generator=g)


def test_cl_ilr_method_is_cl_ilr_loss_and_averages_logits():
    logits, gate, target = _outputs()
    method = create_method("cl_ilr")
    assert isinstance(method, CLILRMethod) and method.temperature == 2.0
    result = method.loss((logits, gate), target, torch.tensor(0.3))  # no weight to read
    torch.testing.assert_close(result.loss, cl_ilr_loss(logits, target, temperature=2.0))
    torch.testing.assert_close(method.ensemble_logits((logits, gate)), logits.detach().mean(1))
    assert method.student_branch(4) == 0 and method.layout == "cl_ilr"


def test_okddip_method_splits_peers_and_leader():
    logits, gate, target = _outputs()
    targets = torch.randn(6, 3, 5)
    method = create_method("okddip", temperature=2.5)
    assert isinstance(method, OKDDipMethod)
    result = method.loss((logits, gate, targets), target, torch.tensor(0.3))
    want = okddip_loss(logits[:, :3], targets, logits[:, 3], target, temperature=2.5,
                       kl_weight=torch.tensor(0.3))
    torch.testing.assert_close(result.loss, want)
    torch.testing.assert_close(method.ensemble_logits((logits, gate)), logits.detach().mean(1))
    assert method.student_branch(4) == 3
    assert create_method("okddip", distill=False).loss(
        (logits, gate, targets), target, 1.0).terms["kl"].item() == 0.0
    with pytest.raises(ValueError, match="needs the peers' targets"):
        method.loss((logits, gate), target, 1.0)


def test_prepare_training_refuses_a_network_of_another_layout():
    with pytest.raises(ValueError, match="layout 'okddip'"):
        OKDDipMethod.prepare_training(create_model("resnet", num_classes=3, depth=8))


@pytest.mark.parametrize("name", ["cl_ilr", "okddip"])
def test_network_and_loss_compile_in_one_graph(name):
    """The training step compiles model + loss: the gradient rescaling and the attention stay
    in one graph (fullgraph), with the eager values and gradients."""
    torch.manual_seed(0)
    model = create_model("resnet", num_classes=5, num_branches=4, layout=name, depth=8)
    METHODS[name].prepare_training(model)
    method = create_method(name)
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 5, (8,))

    def step(x, y, w):
        return method.loss(model(x), y, w).loss

    want = step(x, y, torch.tensor(0.5))
    grads_want = torch.autograd.grad(want, list(model.parameters()))
    torch._dynamo.reset()
    got = torch.compile(step, fullgraph=True, backend="aot_eager")(x, y, torch.tensor(0.5))
    grads = torch.autograd.grad(got, list(model.parameters()))
    torch.testing.assert_close(got, want)
    for a, b in zip(grads, grads_want, strict=True):
        torch.testing.assert_close(a, b)
