"""Each method's loss and evaluation on hand-made tensors, against the losses they stand for."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from one_fast import dml_loss, kd_loss, one_loss
from one_fast.loss import dml_reference, kd_reference
from one_fast.methods import (
    DEFAULT_TEMPERATURE,
    METHODS,
    BaselineMethod,
    DMLMethod,
    EnsembleMethod,
    KDMethod,
    ONEMethod,
    averaged_probability_logits,
    create_method,
)


def outputs(n=6, m=3, c=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, m, c, generator=gen).requires_grad_()
    gate = torch.softmax(torch.randn(n, m, generator=gen), 1).requires_grad_()
    target = torch.randint(0, c, (n,), generator=gen)
    return logits, gate, target


def test_term_names_match_the_terms_and_lead_with_the_loss():
    teacher = torch.randn(6, 5)
    for name, cls in METHODS.items():
        logits, gate, target = outputs(m=cls.min_branches)
        method = create_method(name)
        out = (logits, gate, teacher) if name == "kd" else method.standin_outputs(logits, gate)
        result = method.loss(out, target, torch.tensor(0.5))
        assert tuple(result.terms) == cls.term_names and cls.term_names[0] == "loss"
        assert all(v.dim() == 0 and not v.requires_grad for v in result.terms.values())
        torch.testing.assert_close(result.terms["loss"], result.loss.detach())
        assert result.loss.requires_grad


def test_one_is_one_loss_and_its_ensemble_is_the_gated_logits():
    logits, gate, target = outputs()
    method = ONEMethod(temperature=2.0, detach_teacher=False, backend="reference")
    result = method.loss((logits, gate), target, torch.tensor(0.7))
    want = one_loss(logits, gate, target, temperature=2.0, kl_weight=0.7, detach_teacher=False,
                    backend="reference", return_terms=True)
    torch.testing.assert_close(result.loss, want.loss)
    for name in ("ce_branches", "ce_ensemble", "kl"):
        torch.testing.assert_close(result.terms[name], getattr(want, name))
    ens = method.ensemble_logits((logits, gate))
    torch.testing.assert_close(ens, (gate[:, :, None] * logits).sum(1).detach())
    assert method.metric_names(3) == ["branch_0", "branch_1", "branch_2", "ensemble"]


def test_one_without_distillation_gives_the_loss_a_zero_weight():
    logits, gate, target = outputs()
    result = ONEMethod(distill=False).loss((logits, gate), target, torch.tensor(5.0))
    torch.testing.assert_close(result.loss, one_loss(logits, gate, target, kl_weight=0.0))


def test_baseline_trains_on_plain_cross_entropy():
    logits, gate, target = outputs(m=1)
    result = BaselineMethod().loss((logits, gate), target, torch.tensor(1.0))
    torch.testing.assert_close(result.loss, F.cross_entropy(logits[:, 0], target))
    assert result.terms["ce_branches"] == result.terms["loss"]
    assert BaselineMethod().ensemble_logits((logits, gate)) is None
    assert BaselineMethod().metric_names(1) == ["branch_0"]


def test_ensemble_sums_member_cross_entropies_and_ignores_the_weight():
    logits, gate, target = outputs(m=3)
    result = EnsembleMethod().loss((logits, gate), target, torch.tensor(3.0))
    want = sum(F.cross_entropy(logits[:, i], target) for i in range(3))
    torch.testing.assert_close(result.loss, want)
    g = torch.autograd.grad(result.loss, (logits, gate), allow_unused=True)
    torch.testing.assert_close(g[0], torch.autograd.grad(want, logits)[0])
    assert g[1] is None  # the gate is not part of the ensemble's loss


def test_dml_is_dml_loss_with_the_scheduled_weight():
    logits, gate, target = outputs(m=3)
    result = DMLMethod(temperature=2.0).loss((logits, gate), target, torch.tensor(0.4))
    want = dml_loss(logits, target, temperature=2.0, kl_weight=0.4, return_terms=True)
    torch.testing.assert_close(result.loss, want.loss)
    torch.testing.assert_close(result.terms["kl"], want.kl)
    torch.testing.assert_close(result.terms["ce_branches"], want.ce_branches)


def test_kd_is_kd_loss_of_the_student_and_the_teacher():
    logits, gate, target = outputs(m=1)
    teacher = torch.randn(6, 5, requires_grad=True)
    result = KDMethod(temperature=3.0).loss((logits, gate, teacher), target, torch.tensor(0.9))
    want = kd_loss(logits[:, 0], teacher, target, temperature=3.0, kd_weight=0.9,
                   return_terms=True)
    torch.testing.assert_close(result.loss, want.loss)
    torch.testing.assert_close(result.terms["ce_branches"], want.ce)
    torch.testing.assert_close(result.terms["kl"], want.kl)
    assert torch.autograd.grad(result.loss, teacher, allow_unused=True)[0] is None


def test_kd_without_teacher_logits_or_with_branches_is_an_error():
    logits, gate, target = outputs(m=2)
    with pytest.raises(ValueError, match="StudentWithTeacher"):
        KDMethod().loss((logits, gate), target, 1.0)
    with pytest.raises(ValueError, match=r"logits must be \(N, 1, C\)"):
        KDMethod().loss((logits, gate, torch.randn(6, 5)), target, 1.0)


@pytest.mark.parametrize("name,module", [("kd", kd_reference), ("dml", dml_reference)])
def test_no_distillation_does_not_compute_kl(name, module, monkeypatch):
    logits, gate, target = outputs(m=1 if name == "kd" else 3)
    out = (logits, gate, torch.randn(6, 5)) if name == "kd" else (logits, gate)

    def refuse(*args):
        raise AssertionError("KL computed")

    monkeypatch.setattr(module, "soft_kl", refuse)
    result = create_method(name, distill=False).loss(out, target, torch.tensor(1.0))
    assert result.terms["kl"].item() == 0.0
    with pytest.raises(AssertionError, match="KL computed"):
        create_method(name).loss(out, target, torch.tensor(1.0))


def test_averaged_probabilities_decide_the_ensemble_not_averaged_logits():
    # Mean logits [-3, -2, -2.5] pick class 1; mean probabilities [0.081, 0.456, 0.463] pick 2.
    logits = torch.tensor([[[-4.0, -4.0, -1.0], [-2.0, 0.0, -4.0]]])
    target = torch.tensor([2])
    assert logits.mean(1).argmax().item() == 1  # what a logit-averaging ensemble would say
    for method in (EnsembleMethod(), DMLMethod()):
        ens = method.ensemble_logits((logits, torch.full((1, 2), 0.5)))
        torch.testing.assert_close(torch.softmax(ens, -1), torch.softmax(logits, -1).mean(1))
        counts = method.correct_counts((logits, torch.full((1, 2), 0.5)), target)
        assert counts.tolist() == [1, 0, 1]  # member 0 and the ensemble are right
        assert method.metric_names(2) == ["branch_0", "branch_1", "ensemble"]


def test_averaged_probability_logits_are_stable_for_huge_logits():
    logits = torch.tensor([[[1e4, 0.0, -1e4], [-1e4, 1e4, 0.0]]])
    ens = averaged_probability_logits(logits)
    assert torch.isfinite(ens).all()
    torch.testing.assert_close(torch.softmax(ens, -1), torch.tensor([[0.5, 0.5, 0.0]]))


def test_correct_counts_per_member_and_ensemble():
    logits = torch.tensor([[[3.0, 0.0], [0.0, 1.0]],
                           [[0.0, 2.0], [0.0, 3.0]],
                           [[1.0, 0.0], [1.0, 0.0]]])
    gate = torch.tensor([[0.9, 0.1], [0.5, 0.5], [0.5, 0.5]])
    target = torch.tensor([0, 1, 1])
    assert ONEMethod().correct_counts((logits, gate), target).tolist() == [2, 1, 2]
    assert BaselineMethod().correct_counts((logits[:, :1], gate[:, :1]), target).tolist() == [2]


def test_create_method_defaults_and_errors():
    assert create_method("one").temperature == DEFAULT_TEMPERATURE["one"] == 3.0
    assert create_method("kd").temperature == 4.0
    assert create_method("dml", temperature=2.5).temperature == 2.5
    assert create_method("one", backend="reference", detach_teacher=False).backend == "reference"
    with pytest.raises(ValueError, match="--method must be one of"):
        create_method("mutual")


@pytest.mark.parametrize("name,model,match", [
    ("baseline", dict(num_branches=3), "--method baseline needs --num-branches 1"),
    ("kd", dict(num_branches=2), "--method kd needs --num-branches 1"),
    ("dml", dict(num_branches=3, shared_stages=2), "needs --shared-stages 0"),
    ("dml", dict(num_branches=3, shared_stages=0, share_stem=True), "needs --no-share-stem"),
    ("ensemble", dict(num_branches=3, gate=True), "needs --no-gate"),
    ("ensemble", dict(num_branches=1), "needs --num-branches >= 2"),
    ("dml", dict(num_branches=1), "needs --num-branches >= 2"),
])
def test_check_rejects_models_the_method_cannot_train(name, model, match):
    with pytest.raises(ValueError, match=match):
        create_method(name).check(**model)


def test_check_accepts_what_each_method_trains():
    create_method("one").check(num_branches=3, shared_stages=2, gate=True)
    create_method("baseline").check(num_branches=1, shared_stages=2)
    create_method("kd").check(num_branches=1)
    for name in ("dml", "ensemble"):
        create_method(name).check(num_branches=3, shared_stages=0, share_stem=False, gate=False)
    assert METHODS["one"].uses_gate and not any(
        METHODS[n].uses_gate for n in ("baseline", "kd", "dml", "ensemble"))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_loss_compiles_without_graph_breaks(name):
    logits, gate, target = outputs(m=1 if name in ("baseline", "kd") else 3)
    method = create_method(name, backend="reference")
    out = (logits, gate, torch.randn(6, 5)) if name == "kd" else method.standin_outputs(logits,
                                                                                         gate)
    # A fresh cache: recompiling the same code for another method's temperature would make
    # the temperature a symbolic float, which no single training run does.
    torch._dynamo.reset()
    compiled = torch.compile(lambda o, y, w: method.loss(o, y, w), fullgraph=True,
                             backend="aot_eager")
    got = compiled(out, target, torch.tensor(0.5))
    want = method.loss(out, target, torch.tensor(0.5))
    torch.testing.assert_close(got.loss, want.loss)
    torch.testing.assert_close(torch.autograd.grad(got.loss, logits)[0],
                               torch.autograd.grad(want.loss, logits)[0])


def test_one_without_distillation_never_forms_the_kl_terms(monkeypatch):
    """distill=False: sum_i CE(z_i, y) + CE(z_e, y) by cross-entropies alone (one_loss, which
    forms the KL terms, is not called); values and gradients against float64 written here."""
    from one_fast.methods import one

    def refuse(*args, **kwargs):
        raise AssertionError("one_loss called")

    logits, gate, target = outputs()
    z64 = logits.detach().double().requires_grad_()
    g64 = gate.detach().double().requires_grad_()
    n = target.shape[0]
    rows = torch.arange(n)
    ce_branches = -torch.log_softmax(z64, -1)[rows, :, target].sum(1)
    z_e = (g64[:, :, None] * z64).sum(1)
    ce_ensemble = -torch.log_softmax(z_e, -1)[rows, target]
    want = (ce_branches + ce_ensemble).mean()
    want.backward()

    monkeypatch.setattr(one, "one_loss", refuse)
    result = ONEMethod(distill=False).loss((logits, gate), target, torch.tensor(5.0))
    result.loss.backward()
    torch.testing.assert_close(result.loss.double(), want.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(logits.grad.double(), z64.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gate.grad.double(), g64.grad, rtol=1e-5, atol=1e-6)
    assert result.terms["kl"].item() == 0.0
    torch.testing.assert_close(result.terms["ce_ensemble"].double(), ce_ensemble.mean().detach(),
                               rtol=1e-6, atol=1e-6)
