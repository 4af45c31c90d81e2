"""A member cut out as the plain m = 1 network, and the ensemble as one module, for every arch."""

from __future__ import annotations

import pytest
import torch

from one_fast.deploy import extract_branch, extract_ensemble
from one_fast.methods import create_method
from one_fast.models import ARCHS, ONEImageNetResNet, ONEResNet, ONEWideResNet, create_model

# arch -> (small options, image size); the ImageNet archs at their real width (m = 2 keeps them
# cheap: only their last stage is per branch) on 16x16 images (their last stage runs at 1x1).
SMALL = {
    "resnet": (dict(depth=8), 16),
    "wrn": (dict(depth=10, width=2), 16),
    "resnext29": (dict(depth=11, cardinality=2, base_width=4, widen_factor=1), 16),
    "densenet_bc": (dict(depth=10, growth_rate=4), 16),
    "resnet18": ({}, 16),
    "resnext50_32x4d": ({}, 16),
}
IMAGENET = ("resnet18", "resnext50_32x4d")
ARCH_CASES = [pytest.param(arch, marks=pytest.mark.slow) if arch in IMAGENET else arch
              for arch in SMALL]


def test_every_arch_is_covered():
    assert set(SMALL) == set(ARCHS)


def warmed(model: torch.nn.Module, size: int) -> torch.nn.Module:
    """Train-mode forwards so BatchNorm running statistics (and the gate's) move off their init:
    eval-mode outputs then depend on every buffer being carried over."""
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, size, size) * 2 + 0.5)
    return model.eval()


def build(arch: str, m: int, **options) -> torch.nn.Module:
    return create_model(arch, num_classes=7, num_branches=m, **SMALL[arch][0], **options)


def params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("arch", ARCH_CASES)
def test_branch_equals_its_column_and_is_the_plain_network(arch):
    size = SMALL[arch][1]
    imagenet = arch in IMAGENET
    m = 2 if imagenet else 3
    # float64 where it is cheap (exact up to summation order); the ImageNet archs' float64
    # grouped convolutions take tens of seconds on a CPU, so they are checked in float32.
    dtype, tolerance = (torch.float32, 1e-5) if imagenet else (torch.float64, 1e-12)
    model = warmed(build(arch, m), size).to(dtype)
    x = torch.randn(3, 3, size, size, dtype=dtype)
    with torch.no_grad():
        logits, gate = model(x)
    plain = build(arch, 1)
    for i in range(m):
        student = extract_branch(model, i)
        assert not student.training
        with torch.no_grad():
            out = student(x)
        assert out.shape == (3, 7)
        torch.testing.assert_close(out, logits[:, i], rtol=tolerance, atol=tolerance)
        assert params(student) == params(plain)
        assert student.network.gate_fc is None  # no gate
        plain.load_state_dict(student.state_dict(), strict=True)
        convs = [mod.groups for mod in student.modules() if isinstance(mod, torch.nn.Conv2d)]
        plain_convs = [mod.groups for mod in plain.modules() if isinstance(mod, torch.nn.Conv2d)]
        assert convs == plain_convs  # no convolution grouped across branches

    ensemble = extract_ensemble(model)
    with torch.no_grad():
        expected = (gate[:, :, None] * logits).sum(1)  # ONE-E: sum_i g_i z_i
        torch.testing.assert_close(ensemble(x).to(dtype), expected, rtol=1e-5, atol=1e-5)
    model.load_state_dict(ensemble.state_dict(), strict=True)


@pytest.mark.parametrize("arch", ["resnet", "densenet_bc"])
@pytest.mark.parametrize("method", ["dml", "ensemble"])
def test_independent_members_and_averaged_probability_ensemble(arch, method):
    size = SMALL[arch][1]
    model = warmed(build(arch, 3, share_stem=False, shared_stages=0, gate=False), size)
    x = torch.randn(4, 3, size, size)
    with torch.no_grad():
        logits = model(x)[0].double()
    for i in range(3):
        torch.testing.assert_close(extract_branch(model, i)(x).double(), logits[:, i],
                                   rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        out = extract_ensemble(model, method)(x)
    # log of the mean of the members' probabilities, in float64
    expected = torch.log(torch.softmax(logits, -1).mean(1))
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.logsumexp(out.double(), 1), torch.zeros(4),
                               rtol=0, atol=1e-5, check_dtype=False)


def test_resnet32_student_has_the_paper_parameter_count():
    model = create_model("resnet", num_classes=100, num_branches=3, depth=32)
    assert params(extract_branch(model, 2)) == 472_756
    assert params(create_model("resnet", num_classes=100, num_branches=1, depth=32)) == 472_756


def test_student_is_a_copy():
    model = build("resnet", 3).eval()
    student = extract_branch(model, 0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_bad_index_and_a_model_one_fast_did_not_build():
    model = build("resnet", 3)
    for bad in (3, -1, True, 1.0):
        with pytest.raises(ValueError, match="branch index must be in 0..2"):
            extract_branch(model, bad)
    for extract in (extract_branch, lambda net, _: extract_ensemble(net)):
        with pytest.raises(ValueError, match="built by one_fast .*got Linear"):
            extract(torch.nn.Linear(3, 3), 0)


@pytest.mark.parametrize("build_direct", [
    lambda: ONEResNet(depth=20, num_classes=10, num_branches=3),  # the README's drop-in model
    lambda: ONEResNet(8, 10, 3, "basic", 1),  # positional arguments
    lambda: ONEWideResNet(depth=10, width=2, dropout=0.1, num_classes=7, num_branches=2),
    lambda: ONEImageNetResNet("basic", (1, 1, 1, 1), width=16, num_classes=5, num_branches=3),
], ids=["resnet20", "positional", "wrn", "imagenet-class"])
def test_networks_built_from_their_class_are_extracted(build_direct):
    """Issue 21 item 6: a network built from its class (no create_model) gives its student and
    its ensemble; the student is that class with num_branches=1."""
    model = warmed(build_direct(), 32)
    x = torch.randn(3, 3, 32, 32)
    for i in range(model.num_branches):
        student = extract_branch(model, i)
        assert type(student.network) is type(model) and student.network.num_branches == 1
        torch.testing.assert_close(student(x), model(x)[0][:, i])
    logits, gate = model(x)
    torch.testing.assert_close(extract_ensemble(model)(x), torch.einsum("nm,nmc->nc", gate,
                                                                        logits))


def test_ensemble_needs_an_ensemble():
    with pytest.raises(ValueError, match="m >= 2"):
        extract_ensemble(build("resnet", 1))
    with pytest.raises(ValueError, match="no ensemble"):
        extract_ensemble(build("resnet", 3), "baseline")
    model = build("resnet", 2).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():  # a Method object works as well as its name
        torch.testing.assert_close(extract_ensemble(model, create_method("one"))(x),
                                   extract_ensemble(model, "one")(x), rtol=0, atol=0)
