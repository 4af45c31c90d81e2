"""StudentWithTeacher: a frozen teacher in eval mode inside the student's forward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from one_fast import ONEResNet, kd_loss
from one_fast.methods import (
    BaselineMethod,
    DMLMethod,
    KDMethod,
    ONEMethod,
    StudentWithTeacher,
    teacher_logits,
)


class Tiny(nn.Module):
    """(N, 4) -> (logits (N, m, C), gate (N, m)) through a BatchNorm, like a branched network."""

    def __init__(self, m: int, c: int = 5) -> None:
        super().__init__()
        self.num_branches = m
        self.bn = nn.BatchNorm1d(4)
        self.fc = nn.Linear(4, m * c)
        self.gate_fc = nn.Linear(4, m)

    def forward(self, x):
        h = self.bn(x)
        return self.fc(h).view(x.shape[0], self.num_branches, -1), F.softmax(self.gate_fc(h), 1)


def pair(teacher_output="ensemble", teacher_method=None, m=3):
    teacher = Tiny(m)
    with torch.no_grad():  # running statistics that differ from any batch's own
        teacher.bn.running_mean.fill_(0.5)
        teacher.bn.running_var.fill_(2.0)
    return StudentWithTeacher(Tiny(1), teacher, teacher_output,
                              teacher_method or ONEMethod())


def test_teacher_runs_in_eval_mode_and_selects_its_ensemble():
    model = pair().train()
    x = torch.randn(8, 4)
    logits, gate, taught = model(x)
    assert logits.shape == (8, 1, 5) and gate.shape == (8, 1) and taught.shape == (8, 5)
    assert model.student.training and not model.teacher.training
    t_logits, t_gate = model.teacher(x)  # eval mode: the running statistics
    torch.testing.assert_close(taught, (t_gate[:, :, None] * t_logits).sum(1))
    assert model.teacher.bn.running_mean.eq(0.5).all()  # a training forward left them alone
    assert not model.student.bn.running_mean.eq(0).all()  # the student's BN did update


def test_branch_output_and_averaged_probability_ensemble():
    x = torch.randn(6, 4)
    model = pair(teacher_output=2)
    torch.testing.assert_close(model(x)[2], model.teacher(x)[0][:, 2])
    model = pair(teacher_method=DMLMethod())
    t_logits = model.teacher(x)[0]
    torch.testing.assert_close(torch.softmax(model(x)[2], -1),
                               torch.softmax(t_logits, -1).mean(1))


def test_no_gradient_reaches_the_teacher_and_only_the_student_learns():
    model = pair().train()
    before = [p.clone() for p in model.teacher.parameters()]
    optimizer = torch.optim.SGD(model.student.parameters(), lr=0.5)
    x, y = torch.randn(8, 4), torch.randint(0, 5, (8,))
    result = KDMethod().loss(model(x), y, torch.tensor(1.0))
    result.loss.backward()
    optimizer.step()
    assert all(p.grad is None and not p.requires_grad for p in model.teacher.parameters())
    assert model.student.fc.weight.grad.abs().sum() > 0
    assert all(torch.equal(a, b) for a, b in zip(before, model.teacher.parameters(), strict=True))


def test_kd_loss_value_from_the_pair():
    model = pair(teacher_output=1).eval()
    x, y = torch.randn(5, 4), torch.randint(0, 5, (5,))
    got = KDMethod(temperature=2.0).loss(model(x), y, 0.3).loss
    want = kd_loss(model.student(x)[0][:, 0], model.teacher(x)[0][:, 1], y, temperature=2.0,
                   kd_weight=0.3)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("kwargs,match", [
    (dict(teacher_output="ensemble", teacher_method=BaselineMethod()),
     "--teacher-output ensemble needs a teacher with an ensemble"),
    (dict(teacher_output=3), r"branch index in \[0, 3\)"),
    (dict(teacher_output=-1), "branch index"),
    (dict(teacher_output="best"), "'ensemble' or a branch index"),
    (dict(teacher_output=True), "'ensemble' or a branch index"),
])
def test_bad_teacher_output(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StudentWithTeacher(Tiny(1), Tiny(3), **kwargs)


def test_ensemble_needs_the_teacher_method():
    with pytest.raises(ValueError, match="no method given"):
        StudentWithTeacher(Tiny(1), Tiny(3), "ensemble", None)
    with pytest.raises(ValueError, match="has no ensemble"):
        teacher_logits((torch.zeros(2, 1, 3), torch.ones(2, 1)), BaselineMethod(), "ensemble")


def test_one_resnet_teacher_and_student():
    torch.manual_seed(0)
    teacher = ONEResNet(8, num_classes=10, num_branches=3)
    model = StudentWithTeacher(ONEResNet(8, num_classes=10, num_branches=1), teacher,
                               "ensemble", ONEMethod()).train()
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    logits, gate, taught = model(x)
    assert logits.shape == (4, 1, 10) and taught.shape == (4, 10) and not taught.requires_grad
    KDMethod().loss((logits, gate, taught), y, 1.0).loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert model.student.classifier.weight.grad is not None


@pytest.mark.slow
def test_pair_and_kd_loss_compile_as_one_graph():
    # The step compiles model + loss with fullgraph=True: the teacher's no_grad eval-mode
    # forward must trace into the same graph, and gradients must match eager mode.
    torch._dynamo.reset()
    model = pair(teacher_output="ensemble").train()
    x, y = torch.randn(8, 4), torch.randint(0, 5, (8,))
    method = KDMethod()

    def forward_loss(x, y, w):
        return method.loss(model(x), y, w).loss

    w = torch.tensor(0.5)
    want = forward_loss(x, y, w)
    g_want = torch.autograd.grad(want, model.student.fc.weight)[0]
    got = torch.compile(forward_loss, fullgraph=True, backend="aot_eager")(x, y, w)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(torch.autograd.grad(got, model.student.fc.weight)[0], g_want)
    assert model.teacher.bn.running_mean.eq(0.5).all()
