"""Parameter counts of the published networks, the arch registry, and bad options."""

from __future__ import annotations

import pytest
import torch

from one_fast.models import ARCHS, arch_defaults, create_model


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def build_meta(arch, **kwargs):
    with torch.device("meta"):  # shapes only: no memory, no init cost
        return create_model(arch, **kwargs)


def gate_params(trunk_channels, m):
    return trunk_channels * m + m + 2 * m if m > 1 else 0  # Linear + BatchNorm1d


def wrn_params(depth, width, num_classes, m):
    """WRN from its description: stem conv, pre-activation blocks, BN head, classifier."""
    n = (depth - 4) // 6
    total, channels = 3 * 16 * 9, 16
    for stage, out in enumerate((16 * width, 32 * width, 64 * width)):
        copies = m if stage == 2 else 1
        for b in range(n):
            block = 2 * channels + channels * out * 9 + 2 * out + out * out * 9
            if channels != out or (b == 0 and stage > 0):
                block += channels * out
            total += copies * block
            channels = out
        if stage == 1:
            trunk = channels
    return total + m * (2 * channels + channels * num_classes + num_classes) + gate_params(trunk, m)


def densenet_params(depth, k, num_classes, m):
    """DenseNet-BC: stem conv, bottleneck layers, transitions (compression 0.5), BN head."""
    n = (depth - 4) // 6
    total, channels = 3 * 2 * k * 9, 2 * k
    for stage in range(3):
        copies = m if stage == 2 else 1
        for _ in range(n):
            total += copies * (2 * channels + channels * 4 * k + 2 * 4 * k + 4 * k * k * 9)
            channels += k
        if stage < 2:
            total += 2 * channels + channels * (channels // 2)
            channels //= 2
            trunk = channels
    return total + m * (2 * channels + channels * num_classes + num_classes) + gate_params(trunk, m)


def resnext29_params(cardinality, base_width, num_classes, m):
    """ResNeXt-29: stem conv+BN, 3 bottlenecks per stage (1x1, grouped 3x3, 1x1; BNs)."""
    total, channels = 3 * 64 * 9 + 2 * 64, 64
    for stage in range(3):
        copies = m if stage == 2 else 1
        d, out = cardinality * base_width * 2 ** stage, 256 * 2 ** stage
        for _ in range(3):
            block = channels * d + 2 * d + d * (d // cardinality) * 9 + 2 * d + d * out + 2 * out
            if channels != out:
                block += channels * out + 2 * out
            total += copies * block
            channels = out
        if stage == 1:
            trunk = channels
    return total + m * (channels * num_classes + num_classes) + gate_params(trunk, m)


@pytest.mark.parametrize("m", [1, 3])
def test_cifar_archs_count_like_their_descriptions(m):
    assert n_params(build_meta("wrn", num_classes=10, num_branches=m)) == wrn_params(28, 10, 10, m)
    assert n_params(build_meta("wrn", num_classes=100, num_branches=m, depth=16, width=2)) \
        == wrn_params(16, 2, 100, m)
    assert n_params(build_meta("densenet_bc", num_classes=10, num_branches=m)) \
        == densenet_params(190, 40, 10, m)
    assert n_params(build_meta("densenet_bc", num_classes=100, num_branches=m, depth=100,
                               growth_rate=12)) == densenet_params(100, 12, 100, m)
    assert n_params(build_meta("resnext29", num_classes=10, num_branches=m)) \
        == resnext29_params(8, 64, 10, m)


def test_published_sizes():
    """m = 1: the published networks (CIFAR-10 / 1000 ImageNet classes)."""
    def millions(arch, classes):
        return round(n_params(build_meta(arch, num_classes=classes, num_branches=1)) / 1e6, 1)

    assert millions("wrn", 10) == 36.5
    assert millions("resnext29", 10) == 34.4
    assert millions("densenet_bc", 10) == 25.6
    # torchvision's exact counts for its resnet18 and resnext50_32x4d.
    assert n_params(build_meta("resnet18", num_classes=1000, num_branches=1)) == 11_689_512
    assert n_params(build_meta("resnext50_32x4d", num_classes=1000, num_branches=1)) \
        == 25_028_904
    # The m = 1 CIFAR ResNet-32 (100 classes) the student export relies on.
    assert n_params(build_meta("resnet", num_classes=100, num_branches=1)) == 472_756


def test_imagenet_branch_is_the_last_stage():
    """m = 3 adds exactly two more copies of stage 4 + classifier, plus the gate."""
    one = build_meta("resnet18", num_classes=1000, num_branches=1)
    three = build_meta("resnet18", num_classes=1000, num_branches=3)
    stage4 = sum(p.numel() for p in one.branches.parameters()) + n_params(one.classifier)
    assert n_params(three) == n_params(one) + 2 * stage4 + gate_params(256, 3)


def test_registry_defaults_build_the_same_network():
    for arch in ARCHS:
        defaults = arch_defaults(arch)
        assert {"shared_stages", "gate", "share_stem"} <= defaults.keys()
        a = build_meta(arch, num_classes=10)
        b = build_meta(arch, num_classes=10, **defaults)
        assert [p.shape for p in a.parameters()] == [p.shape for p in b.parameters()]
        assert a.shared_stages == defaults["shared_stages"] and len(a.trunk) > 0


@pytest.mark.parametrize("arch,options,match", [
    ("vgg", {}, r"unknown arch 'vgg'; choose one of: resnet, wrn"),
    ("resnet", dict(width=4), r"option 'width' is not taken by arch 'resnet' \(it takes: block,"),
    ("resnet18", dict(depth=18), r"option 'depth' is not taken by arch 'resnet18'"),
    ("wrn", dict(depth=27), r"depth for arch 'wrn' must be 6n\+4"),
    ("wrn", dict(depth=28.0), r"option 'depth' of arch 'wrn' must be a int"),
    ("wrn", dict(width=0), r"width must be a positive int, got 0"),
    ("wrn", dict(dropout=1.0), r"dropout must be a number in \[0, 1\)"),
    ("wrn", dict(gate="yes"), r"option 'gate' of arch 'wrn' must be a bool"),
    ("densenet_bc", dict(depth=101), r"depth for arch 'densenet_bc' must be 6n\+4"),
    ("densenet_bc", dict(growth_rate=0), r"growth_rate must be a positive int"),
    ("resnext29", dict(depth=30), r"depth for block='bottleneck' must be 9n\+2"),
    ("resnext29", dict(cardinality=0), r"cardinality must be a positive int"),
    ("resnext29", dict(base_width=True), r"option 'base_width' of arch 'resnext29' must be a int"),
    ("resnet", dict(block="dense"), r"block must be one of"),
    ("wrn", dict(shared_stages=3), r"shared_stages must be 0, 1 or 2, got 3"),
    ("resnet18", dict(shared_stages=4), r"shared_stages must be 0, 1, 2 or 3, got 4"),
    ("densenet_bc", dict(share_stem=False),
     r"share_stem=False needs shared_stages=0: .* \(got shared_stages=2\)"),
])
def test_bad_options_name_the_option(arch, options, match):
    with pytest.raises(ValueError, match=match):
        build_meta(arch, num_classes=10, **options)


@pytest.mark.parametrize("kwargs,match", [
    (dict(num_classes=0), "num_classes must be a positive int"),
    (dict(num_classes=10, num_branches=0), "num_branches must be a positive int"),
])
def test_bad_sizes(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_meta("wrn", **kwargs)
