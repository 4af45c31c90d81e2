"""Cost accounting: the ONE authors' FLOP figures, the student = the m = 1 network, training
FLOPs against counts derived by hand, and the meta-device count against a real run."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from one_fast.costs import FLOPS_CONVENTION, Costs, inference_flops, model_costs
from one_fast.models import ONEResNet


def resnet(depth: int, classes: int = 100, block: str = "basic", **kw):
    return lambda m: ONEResNet(depth, classes, m, block=block, **kw)


def plain_forward_flops(build, m: int, shape=(3, 32, 32)) -> int:
    """Forward FLOPs of one image through build(m) under torch's FlopCounterMode as it ships
    (on the meta device: test_meta_count_equals_a_real_cpu_run shows that changes nothing)."""
    with torch.device("meta"):
        model = build(m).eval()
        x = torch.zeros(1, *shape)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops()


def test_one_resnet32_matches_the_authors_figure():
    costs = model_costs(resnet(32), 3)
    # The ONE authors: 2.28e8 FLOPs (2 x multiply-adds) for the whole ONE ResNet-32 forward.
    assert costs.ensemble_flops == pytest.approx(2.28e8, rel=0.02)
    # The student is exactly the m = 1 network.
    assert costs.student_flops == plain_forward_flops(resnet(32), 1)
    # Parameter counts checked against the authors' own ONE_ResNet (their public code).
    assert (costs.student_params, costs.ensemble_params) == (472_756, 1_193_189)
    # Training: every forward multiply-add is one of the input gradient and one of the weight
    # gradient, except the stem's input gradient (the images need none); the loss adds its
    # gated sum z_e = g . z (2mC forward, twice that backward).
    forward = plain_forward_flops(resnet(32), 3)
    stem_input_grad = 2 * 32 * 32 * 16 * 3 * 9
    assert costs.train_flops == 3 * forward - stem_input_grad + 3 * (2 * 3 * 100)
    assert costs.ensemble_flops == forward + 2 * 3 * 100


def test_bottleneck_164_matches_the_authors_figure():
    """Forward only (the training count is tested on ResNet-32): one image on the meta device."""
    with torch.device("meta"):
        network = ONEResNet(164, 100, 3, block="bottleneck")
    # The authors' "ResNet-110" ONE (18 bottleneck blocks per stage): 8.29e8 FLOPs forward.
    assert inference_flops(network) == pytest.approx(8.29e8, rel=0.02)


class TinyBranched(nn.Module):
    """conv 3->4 (3x3) -> global pool -> linear to m*C logits, and a linear gate."""

    def __init__(self, m: int, classes: int = 5) -> None:
        super().__init__()
        self.m, self.classes = m, classes
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.head = nn.Linear(4, m * classes)
        self.gate = nn.Linear(4, m)

    def forward(self, x):
        h = self.conv(x).mean((2, 3))
        return self.head(h).view(-1, self.m, self.classes), F.softmax(self.gate(h), 1)


def test_any_branched_module_counts_as_derived_by_hand():
    def branch_ce(logits, gate, target):  # the gate gets no gradient: its backward is not run
        m = logits.shape[1]
        return F.cross_entropy(logits.flatten(0, 1), target.repeat_interleave(m))

    m, c = 2, 5
    costs = model_costs(TinyBranched, m, (3, 8, 8), loss_fn=branch_ce)
    conv, head, gate = 8 * 8 * 4 * 3 * 9, 4 * m * c, 4 * m  # multiply-adds per image
    assert costs.ensemble_flops == 2 * (conv + head + gate) + 2 * m * c
    assert costs.student_flops == 2 * (conv + 4 * c + 4)
    # conv: forward + weight gradient; head: forward + both gradients; gate: forward only.
    assert costs.train_flops == 2 * (2 * conv + 3 * head + gate)
    assert costs.ensemble_params == 4 * 27 + (4 + 1) * m * c + (4 + 1) * m
    assert costs.student_params == 4 * 27 + (4 + 1) * c + (4 + 1)


@pytest.mark.parametrize("transposed", [False, True])
def test_grouped_convolution_backward_is_twice_its_forward(transposed):
    """torch's own rule counts a grouped convolution's weight gradient `groups` times over."""
    cls = nn.ConvTranspose2d if transposed else nn.Conv2d

    class Grouped(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.conv = cls(6, 9, 3, stride=2, padding=1, groups=3, bias=False)

        def forward(self, x):
            logits = self.conv(x).mean((2, 3)).view(-1, 1, 9)
            return logits, torch.ones(x.shape[0], 1, device=x.device)

    costs = model_costs(Grouped, 1, (6, 7, 7), loss_fn=lambda z, g, y: z.sum())
    assert costs.train_flops == 2 * costs.student_flops


def test_batched_branches_cost_what_branch_by_branch_costs():
    def build(batched):
        def make(m):
            net = ONEResNet(8, 10, m)
            net.batched = batched
            return net
        return make

    batched, one_by_one = model_costs(build(True), 3), model_costs(build(False), 3)
    assert batched == one_by_one


def test_meta_count_equals_a_real_cpu_run_which_leaves_the_random_state_alone():
    build = resnet(8, classes=10, shared_stages=1)
    before = torch.get_rng_state()
    on_cpu = model_costs(build, 2, (3, 8, 8), device="cpu")  # builds draw initial weights
    assert torch.equal(torch.get_rng_state(), before)
    assert on_cpu == model_costs(build, 2, (3, 8, 8))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_meta_count_equals_a_cuda_run():
    """cuDNN runs other kernels, but the counter sees the same aten ops (and their shapes)."""
    build = resnet(8, classes=10)
    cuda_state = torch.cuda.get_rng_state()
    assert model_costs(build, 3, (3, 16, 16), device="cuda") == model_costs(build, 3, (3, 16, 16))
    assert torch.equal(torch.cuda.get_rng_state(), cuda_state)


def test_single_branch_network():
    costs = model_costs(resnet(8, classes=10), 1, (3, 16, 16))
    assert costs.ensemble_flops == costs.student_flops
    assert costs.ensemble_params == costs.student_params
    assert "ensemble" not in costs.describe() and "gate" not in costs.describe()


def test_report_formats():
    costs = Costs(3, (3, 32, 32), 684_510_024, 138_260_992, 228_464_920, 472_756, 1_193_189)
    line = costs.describe()
    assert "\n" not in line and FLOPS_CONVENTION in line and "2 x multiply-adds" in line
    assert "train 6.85e+08 (forward + backward: 3 branches, gate, loss)" in line
    assert "ensemble of 3 2.28e+08" in line
    assert "student 1.38e+08" in line and "1,193,189" in line
    record = json.loads(json.dumps(costs.to_dict()))
    assert record["train_flops"] == 684_510_024 and record["input_shape"] == [3, 32, 32]
    assert record["flops_convention"] == FLOPS_CONVENTION


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="num_branches"):
        model_costs(resnet(8), 0)
    with pytest.raises(ValueError, match="input_shape"):
        model_costs(resnet(8), 2, (3, 0, 32))

    class LogitsOnly(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.fc = nn.Linear(3, m)

        def forward(self, x):
            return self.fc(x.mean((2, 3)))

    class Listed(LogitsOnly):
        def forward(self, x):
            return [super().forward(x)]

    with pytest.raises(TypeError, match=r"forward must return \(logits, gate\) or logits "
                                        r"\(N, C\), got list"):
        model_costs(Listed, 2)
    with pytest.raises(ValueError, match=r"build\(2\) gave 1"):  # logits (N, C): one member
        model_costs(LogitsOnly, 2)
    assert inference_flops(LogitsOnly(5)) == 2 * 3 * 5  # a plain classifier counts
    with pytest.raises(ValueError, match=r"build\(3\) gave 2, build\(1\) gave 1"):
        model_costs(lambda m: ONEResNet(8, 10, max(m - 1, 1)), 3)
