"""ONEResNet: shapes, parameter counts, and batched vs per-branch execution agreeing."""

from __future__ import annotations

import copy

import pytest
import torch

from one_fast import ONEResNet, one_loss

from .arch_cases import bn_state, train_step


def expected_parameters(depth, num_classes, m, block="basic", shared_stages=2, gate=True):
    """Count parameters from the architecture's description, layer by layer (no model code)."""
    widths = (16, 32, 64)
    expansion = 1 if block == "basic" else 4
    n = (depth - 2) // (6 if block == "basic" else 9)
    total = 3 * 16 * 9 + 2 * 16  # stem conv + BN
    channels = 16
    trunk_channels = 16
    for stage, width in enumerate(widths):
        copies = 1 if stage < shared_stages else m
        out = width * expansion
        for b in range(n):
            if block == "basic":
                params = channels * width * 9 + width * width * 9 + 2 * (2 * width)
            else:
                params = (channels * width + width * width * 9 + width * out
                          + 2 * (2 * width) + 2 * out)
            if (stage > 0 and b == 0) or channels != out:
                params += channels * out + 2 * out  # 1x1 projection + BN
            total += copies * params
            channels = out
        if stage < shared_stages:
            trunk_channels = channels
    total += m * (channels * num_classes + num_classes)
    if gate and m > 1:
        total += trunk_channels * m + m + 2 * m  # Linear + BatchNorm1d
    return total


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("depth,m,block,shared,gate", [
    (32, 1, "basic", 2, True), (32, 3, "basic", 2, True), (20, 5, "basic", 1, True),
    (20, 2, "basic", 0, False), (110, 3, "basic", 2, True), (164, 3, "bottleneck", 2, True),
    (29, 4, "bottleneck", 0, True),
])
def test_parameter_count(depth, m, block, shared, gate):
    model = ONEResNet(depth, 100, m, block, shared, gate)
    assert n_params(model) == expected_parameters(depth, 100, m, block, shared, gate)


def test_paper_sizes():
    # ResNet-32 with 100 classes: ~0.47M as a plain network, ~1.19M as ONE with 3 branches.
    assert round(n_params(ONEResNet(32, 100, 1)) / 1e6, 2) == 0.47
    assert round(n_params(ONEResNet(32, 100, 3)) / 1e6, 2) == 1.19


@pytest.mark.parametrize("m", [1, 3])
def test_output_shapes_and_gate(m):
    model = ONEResNet(20, 10, m)
    logits, gate = model(torch.randn(5, 3, 32, 32))
    assert logits.shape == (5, m, 10) and gate.shape == (5, m)
    torch.testing.assert_close(gate.sum(1), torch.ones(5))
    assert (gate >= 0).all()


def test_no_gate_is_uniform():
    _, gate = ONEResNet(20, 10, 4, gate=False)(torch.randn(3, 3, 32, 32))
    torch.testing.assert_close(gate, torch.full((3, 4), 0.25))


@pytest.mark.parametrize("m", [1, 2, 3, 5])
@pytest.mark.parametrize("shared", [0, 1, 2])
def test_batched_matches_per_branch(m, shared):
    torch.manual_seed(0)
    model = ONEResNet(8, 7, m, shared_stages=shared)
    twin = copy.deepcopy(model)
    x, y = torch.randn(6, 3, 16, 16), torch.randint(0, 7, (6,))
    out_b = train_step(model, x, y, True, one_loss)
    out_r = train_step(twin, x, y, False, one_loss)
    tol = dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out_b[0], out_r[0], **tol)
    torch.testing.assert_close(out_b[1], out_r[1], **tol)
    assert out_b[2].keys() == out_r[2].keys()
    for k in out_b[2]:
        torch.testing.assert_close(out_b[2][k], out_r[2][k], **tol, msg=lambda s, k=k: f"{k}: {s}")
    for k in out_b[3]:
        torch.testing.assert_close(out_b[3][k], out_r[3][k], **tol, msg=lambda s, k=k: f"{k}: {s}")
    # Running stats really moved: the comparison above is not between two untouched buffers.
    fresh = bn_state(ONEResNet(8, 7, m, shared_stages=shared))
    moved = [k for k in fresh if "running_mean" in k and not torch.equal(fresh[k], out_b[3][k])]
    assert len(moved) == len([k for k in fresh if "running_mean" in k])


def test_eval_mode_paths_agree_and_flag_flips_at_any_time():
    torch.manual_seed(1)
    model = ONEResNet(14, 10, 3, block="basic").eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        a = model(x)[0]
        model.batched = False
        b = model(x)[0]
        model.batched = True
        c = model(x)[0]
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert torch.equal(a, c)


def test_bottleneck_paths_agree():
    torch.manual_seed(2)
    model = ONEResNet(11, 10, 3, block="bottleneck", shared_stages=1).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        a = model(x)[0]
        model.batched = False
        b = model(x)[0]
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_channels_last():
    torch.manual_seed(3)
    model = ONEResNet(8, 10, 3).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        want = model(x)[0]
        model = model.to(memory_format=torch.channels_last)
        got = model(x.to(memory_format=torch.channels_last))[0]
        model.batched = False
        got_ref = model(x.to(memory_format=torch.channels_last))[0]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got_ref, want, rtol=1e-4, atol=1e-5)


def test_state_dict_round_trips_between_paths():
    a = ONEResNet(8, 10, 3)
    b = ONEResNet(8, 10, 3, batched=False)
    assert a.state_dict().keys() == b.state_dict().keys()
    b.load_state_dict(a.state_dict())


@pytest.mark.parametrize("kwargs,match", [
    (dict(depth=33), r"depth for block='basic' must be 6n\+2"),
    (dict(depth=32, block="bottleneck"), r"depth for block='bottleneck' must be 9n\+2"),
    (dict(block="dense"), "block must be one of"),
    (dict(num_branches=0), "num_branches must be a positive int"),
    (dict(num_classes=0), "num_classes must be a positive int"),
    (dict(shared_stages=3), "shared_stages must be 0, 1 or 2"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ONEResNet(**kwargs)
