"""branch(model, at=...): batched branches equal the loop, the student comes back as the user's
class, and bad input is refused with the problem named."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from one_fast import ONELoss
from one_fast.costs import inference_flops, model_costs
from one_fast.export import extract_branch, extract_ensemble
from one_fast.models import OwnBranchedNetwork, branch

from .equality import assert_batched_equals_loop
from .zoo import MobileNetLike, ResNet, mobilenet, resnet

# (factory of a float64 model without dropout, where its branches start, image size)
MODELS = {
    "resnet-layer4": (lambda: resnet(num_classes=5).double(), "layer4", 32),
    "resnet-layer3": (lambda: resnet(num_classes=5).double(), "layer3", 32),
    "mobilenet-features.3": (lambda: mobilenet(num_classes=5, dropout=0.0).double(),
                             "features.3", 32),
}


def images(size: int, n: int = 6) -> torch.Tensor:
    return torch.randn(n, 3, size, size, dtype=torch.float64) * 2 + 0.5


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("m", [1, 2, 3])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batched_equals_the_loop(name, m, training):
    """vmap over the stacked heads == one branch after another: outputs, every gradient and
    every buffer (BatchNorm running statistics and counters) after the step, float64."""
    factory, at, size = MODELS[name]
    assert_batched_equals_loop(branch(factory, at=at, num_branches=m), lambda: images(size),
                               training)


def test_each_branch_is_the_model_with_that_branch_s_weights():
    """Branch i of the batched forward is the user's model run with the trunk and head i."""
    made = []

    def factory():
        made.append(resnet(num_classes=4).double())
        return made[-1]

    net = branch(factory, at="layer3", num_branches=3).eval()
    assert len(made) == 3  # one call per branch: each head initialised as the model does
    x = images(32)
    logits, gate = net(x)
    for i, model in enumerate(made):
        own = copy.deepcopy(made[0])  # trunk of the first, head of model i
        own.layer3, own.layer4, own.fc = model.layer3, model.layer4, model.fc
        torch.testing.assert_close(logits[:, i], own.eval()(x))
    torch.testing.assert_close(gate.sum(1), torch.ones(6, dtype=torch.float64))


def test_state_dict_keys_are_the_model_s_own_names():
    net = branch(lambda: resnet(num_classes=4), at="layer4", num_branches=3)
    keys = net.state_dict()
    assert "trunk.conv1.weight" in keys and "trunk.layer3.conv2.weight" in keys
    assert keys["branches.layer4.conv1.weight"].shape == (3, 64, 32, 3, 3)
    assert keys["branches.fc.bias"].shape == (3, 4)
    assert {k.split(".")[0] for k in keys} == {"trunk", "branches", "gate"}
    assert {k for k in keys if k.startswith("gate")} >= {"gate.fc.weight", "gate.bn.running_mean"}
    assert not any(k.startswith("trunk.layer4") or k.startswith("trunk.fc") for k in keys)


def test_a_module_is_copied_then_perturbed_and_left_alone():
    model = resnet(num_classes=4)
    before = copy.deepcopy(model.state_dict())
    net = branch(model, at="layer4", num_branches=3)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key  # the user's model is not modified
    heads = net.state_dict()
    w = heads["branches.layer4.conv1.weight"]
    assert torch.equal(w[0], before["layer4.conv1.weight"])  # branch 0: the model's own head
    for i in (1, 2):  # the others differ by about PERTURBATION of the weights' spread
        relative = ((w[i] - w[0]).std() / w[0].std()).item()
        assert 0.05 < relative < 0.2, relative
    torch.testing.assert_close(heads["branches.layer4.bn1.weight"][2],
                               before["layer4.bn1.weight"], rtol=0, atol=0)


def test_copies_keep_the_model_s_batchnorm_statistics():
    """A trained model's running statistics (small variances spread across channels) are
    copied into every branch as they are: noise on them could make a variance negative."""
    model = resnet(num_classes=4)
    with torch.no_grad():
        for bn in model.modules():
            if isinstance(bn, torch.nn.BatchNorm2d):
                bn.running_mean.copy_(torch.randn(bn.num_features))
                bn.running_var.copy_(torch.rand(bn.num_features) * 1e-3 + 1e-4 * torch.arange(
                    bn.num_features))
    before = model.state_dict()
    heads = branch(model, at="layer4", num_branches=3).state_dict()
    for stat in ("running_mean", "running_var", "num_batches_tracked"):
        stacked = heads[f"branches.layer4.bn1.{stat}"]
        for i in range(3):
            assert torch.equal(stacked[i], before[f"layer4.bn1.{stat}"]), (stat, i)
    net = branch(model, at="layer4", num_branches=3).eval()
    assert torch.isfinite(net(torch.randn(4, 3, 32, 32))[0]).all()


def test_dropout_is_independent_per_branch():
    """randomness="different": branches with equal weights drop different units in train mode
    and agree in eval mode."""
    net = branch(lambda: mobilenet(num_classes=5, dropout=0.5), at="features.4", num_branches=3)
    with torch.no_grad():
        for tensor in net.branch_tensors().values():
            tensor.copy_(tensor[:1].expand_as(tensor))  # every branch = branch 0
    x = torch.randn(8, 3, 32, 32)
    for batched in (True, False):
        net.batched = batched
        logits = net.train()(x)[0]
        assert not torch.allclose(logits[:, 0], logits[:, 1])
        assert not torch.allclose(logits[:, 1], logits[:, 2])
        logits = net.eval()(x)[0]
        torch.testing.assert_close(logits[:, 0], logits[:, 2], rtol=0, atol=0)


@pytest.mark.parametrize("name", MODELS)
def test_the_student_is_the_user_s_class(name):
    factory, at, size = MODELS[name]
    net = branch(factory, at=at, num_branches=3)
    net.train()(images(size))  # move BatchNorm statistics off their initial values
    net.eval()
    x = images(size)
    expected = net(x)[0]
    for i in range(3):
        student = extract_branch(net, i)
        assert type(student) in (ResNet, MobileNetLike) and not student.training
        torch.testing.assert_close(student(x), expected[:, i])
        fresh = factory()
        fresh.load_state_dict(student.state_dict(), strict=True)
        torch.testing.assert_close(fresh.eval()(x), expected[:, i])
    ensemble = extract_ensemble(net)
    logits, gate = net(x)
    torch.testing.assert_close(ensemble(x), torch.einsum("nm,nmc->nc", gate, logits).float())
    torch.testing.assert_close(copy.deepcopy(net)(x)[0], expected)


class StochasticDepth(nn.Module):
    """torchvision's, line for line: the residual branch is dropped per sample in train mode
    only (a Python branch on self.training, which tracing fixes), its mask drawn in place."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        survival_rate = 1.0 - self.p
        noise = torch.empty((x.shape[0], 1, 1, 1), dtype=x.dtype, device=x.device)
        noise = noise.bernoulli_(survival_rate)  # in place, into a tensor made here
        if survival_rate > 0.0:
            noise.div_(survival_rate)
        return x * noise


class DeepResidual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.block = nn.Conv2d(8, 8, 3, padding=1)
        self.drop = StochasticDepth(0.5)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.drop(self.block(x))
        return self.fc(x.mean((2, 3)))


def test_code_that_depends_on_the_mode_follows_it():
    """Traced in train mode, stochastic depth would stay on in eval mode: the eval-mode trace
    runs there. Per branch in train mode, off (deterministic, == the user's model) in eval."""
    net = branch(DeepResidual(), at="block", num_branches=2, gate=None)
    with torch.no_grad():
        for tensor in net.branch_tensors().values():
            tensor.copy_(tensor[:1].expand_as(tensor))
    x = torch.randn(16, 3, 8, 8)
    for batched in (True, False):
        net.batched = batched
        logits = net.train()(x)[0]
        assert not torch.allclose(logits[:, 0], logits[:, 1])
        logits = net.eval()(x)[0]
        torch.testing.assert_close(logits[:, 1], logits[:, 0], rtol=0, atol=0)
        torch.testing.assert_close(logits[:, 0], extract_branch(net, 0)(x))


def test_share_stem_false_is_m_whole_models():
    net = branch(lambda: resnet(num_classes=3).double(), at=None, share_stem=False,
                 num_branches=2)
    assert {k.split(".")[0] for k in net.state_dict()} == {"branches", "gate"}
    looped = copy.deepcopy(net)
    looped.batched = False
    x = images(32)
    for got, expected in zip(net(x), looped(x), strict=True):
        torch.testing.assert_close(got, expected)
    student = extract_branch(net.eval(), 1)
    torch.testing.assert_close(student(x), net(x)[0][:, 1])


def test_gates():
    x = torch.randn(4, 3, 32, 32)
    uniform = branch(lambda: resnet(), at="layer4", num_branches=4, gate=None)
    torch.testing.assert_close(uniform(x)[1], torch.full((4, 4), 0.25))
    assert not any(k.startswith("gate") for k in uniform.state_dict())
    single = branch(lambda: resnet(), at="layer4", num_branches=1)
    torch.testing.assert_close(single(x)[1], torch.ones(4, 1))
    gated = branch(lambda: resnet(), at="layer4", num_branches=3)
    assert gated.gate.fc.in_features == 32  # the channels entering layer4


def test_a_plain_loop_with_one_loss_lowers_the_loss():
    torch.manual_seed(1)
    net = branch(lambda: resnet(num_classes=4, width=4, stem_stride=1), at="layer4")
    criterion = ONELoss(temperature=3.0)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    x, y = torch.randn(16, 3, 16, 16), torch.randint(0, 4, (16,))
    losses = []
    for _ in range(8):
        logits, gate = net(x)
        loss = criterion(logits, gate, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


# ---- bad input ---------------------------------------------------------------------------------

class TwiceUsed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.block = nn.Conv2d(3, 3, 3, padding=1)
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        x = self.block(self.block(self.conv(x)))
        return self.fc(x.mean((2, 3)))


class SharedAcross(TwiceUsed):
    def forward(self, x):
        x = self.block(self.conv(x))
        return self.fc(self.conv(x).mean((2, 3)))


class Untraceable(TwiceUsed):
    def forward(self, x):
        x = self.conv(x)
        if x.sum() > 0:  # control flow on a tensor's value
            x = self.block(x)
        return self.fc(x.mean((2, 3)))


class SkipFromInput(TwiceUsed):
    def forward(self, x):
        return self.fc((self.block(self.conv(x)) + x).mean((2, 3)))


class Features(TwiceUsed):
    def forward(self, x):
        return self.block(self.conv(x))  # (N, C, H, W), not logits


class Pair(TwiceUsed):
    def forward(self, x):
        out = self.fc(self.block(self.conv(x)).mean((2, 3)))
        return out, out


@pytest.mark.parametrize("model, at, message", [
    (TwiceUsed(), "nothing", r"at='nothing' names no submodule of TwiceUsed; its top-level "
                             r"children: conv, block, fc"),
    (TwiceUsed(), "", "at must name a submodule"),
    (TwiceUsed(), "block", "used 2 times in forward"),
    (SharedAcross(), "block", r"conv.bias, conv.weight are used both before and after"),
    (Untraceable(), "block", r"Untraceable does not trace with torch.fx \(TraceError: "),
    (SkipFromInput(), "block", r"2 values do \(x \(the input\), conv"),
    (Pair(), "fc", "forward returns tuple, not one logits tensor"),
], ids=["at-nothing", "at-empty", "used-twice", "shared-across", "untraceable", "input-skip",
        "tuple-output"])
def test_bad_models_are_refused_naming_the_problem(model, at, message):
    with pytest.raises(ValueError, match=message):
        branch(model, at=at)


def test_logits_of_the_wrong_shape_are_refused_at_the_first_forward():
    net = branch(Features(), at="block", num_branches=2, gate=None)
    with pytest.raises(ValueError, match=r"must return logits \(N, C\) for N = 2 images; its "
                                         r"head returned \(2, 3, 8, 8\)"):
        net(torch.randn(2, 3, 8, 8))


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_branches must be a positive int"):
        branch(resnet(), at="layer4", num_branches=0)
    with pytest.raises(ValueError, match="gate must be 'one'"):
        branch(resnet(), at="layer4", gate="mean")
    with pytest.raises(ValueError, match="share_stem=False shares nothing"):
        branch(resnet(), at="layer4", share_stem=False)
    with pytest.raises(ValueError, match="must build an nn.Module, it returned int"):
        branch(lambda: 3, at="layer4")
    with pytest.raises(ValueError, match="nn.Module or a function"):
        branch("resnet", at="layer4")
    assert isinstance(branch(resnet(), at="layer4"), OwnBranchedNetwork)


def stochastic_depth(input, p, mode, training=True):
    """torchvision.ops.stochastic_depth, line for line (torchvision does not load beside the
    CPU torch here); fx-wrapped under its module's name as torchvision wraps it."""
    if not training or p == 0.0:
        return input
    survival_rate = 1.0 - p
    size = [input.shape[0]] + [1] * (input.ndim - 1) if mode == "row" else [1] * input.ndim
    noise = torch.empty(size, dtype=input.dtype, device=input.device)
    noise = noise.bernoulli_(survival_rate)
    if survival_rate > 0.0:
        noise.div_(survival_rate)
    return input * noise


stochastic_depth.__module__ = "torchvision.ops.stochastic_depth"
torch.fx.wrap("stochastic_depth")


class WrappedDepth(DeepResidual):
    def forward(self, x):
        x = self.stem(x)
        x = x + stochastic_depth(self.block(x), 0.5, "row", self.training)
        return self.fc(x.mean((2, 3)))


def test_torchvision_s_fx_wrapped_stochastic_depth_draws_per_branch():
    net = branch(WrappedDepth(), at="block", num_branches=2, gate=None)
    with torch.no_grad():
        for tensor in net.branch_tensors().values():
            tensor.copy_(tensor[:1].expand_as(tensor))
    x = torch.randn(16, 3, 8, 8)
    logits = net.train()(x)[0]  # vmap: in place, the draw would be refused
    assert not torch.allclose(logits[:, 0], logits[:, 1])
    logits = net.eval()(x)[0]
    torch.testing.assert_close(logits[:, 0], extract_branch(net, 1)(x), rtol=0, atol=0)


def test_costs_count_the_wrapped_network_and_its_student():
    """FLOPs of a wrapped model on the meta device: the student (the user's class) costs what
    the user's model costs, the ensemble adds m - 1 heads (cheap: layer4 runs at 1x1 here)
    and the gate."""
    costs = model_costs(lambda m: branch(lambda: resnet(num_classes=4), at="layer4",
                                         num_branches=m), 3, (3, 32, 32))
    plain = inference_flops(resnet(num_classes=4), (3, 32, 32))
    assert costs.student_flops == plain < costs.ensemble_flops < 3 * plain
    assert costs.student_params == sum(p.numel() for p in resnet(num_classes=4).parameters())
    assert costs.train_flops > 2 * costs.ensemble_flops
    student = extract_branch(branch(resnet(num_classes=4), at="layer4").eval(), 0)
    assert inference_flops(student, (3, 32, 32)) == plain
