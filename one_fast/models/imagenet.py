"""ImageNet ResNet-18 and ResNeXt-50 (32x4d) as ONE networks (torchvision's layout)."""

from __future__ import annotations

from .blocks import BLOCKS, Stem
from .network import BranchedNetwork
from .resnet import residual_stage

STAGE_PLANES = (64, 128, 256, 512)
STAGE_STRIDES = (1, 2, 2, 2)


class ONEImageNetResNet(BranchedNetwork):
    """ONE ResNet / ResNeXt for ImageNet-sized images (224x224; any size >= 32 runs).

    Stem 7x7 conv stride 2 (64) + BN + ReLU + 3x3 max-pool stride 2; four stages of residual
    blocks (planes 64, 128, 256, 512; strides 1, 2, 2, 2); global average pool, classifier.
    The trunk is stages 1-3 (``shared_stages=3``), the branch stage 4 + classifier.

    ``create_model("resnet18")``: basic blocks (2, 2, 2, 2): 11,689,512 parameters with m = 1
    (1000 classes, torchvision's count), 29,503,745 with m = 3.
    ``create_model("resnext50_32x4d")``: bottlenecks (3, 4, 6, 3), 32 groups x 4 channels:
    25,028,904 with m = 1 (1000 classes), 58,219,777 with m = 3.

    Args:
        block: "basic" or "bottleneck".
        layers: blocks per stage (four ints).
        groups, base_width: a bottleneck's grouped 3x3 convolution (ResNeXt 32, 4).
        width: channels of the stem; stage planes scale with it (64 = the published networks;
            smaller for tests).
        num_classes, num_branches, shared_stages, gate, batched, share_stem: as in
            :class:`~one_fast.models.network.BranchedNetwork` (shared_stages 0..3, default 3).
    """

    def __init__(self, block: str, layers: tuple[int, int, int, int], *, groups: int = 1,
                 base_width: int = 64, width: int = 64, num_classes: int = 1000,
                 num_branches: int = 3, shared_stages: int = 3, gate: bool = True,
                 batched: bool = True, share_stem: bool = True) -> None:
        if block not in BLOCKS:
            raise ValueError(f"block must be one of {sorted(BLOCKS)}, got {block!r}")
        options = {} if block == "basic" else dict(groups=groups, base_width=base_width)
        planes = [p * width // 64 for p in STAGE_PLANES]
        super().__init__(
            stem=lambda m: (Stem(m, width, kernel_size=7, stride=2, max_pool=True), width),
            stages=[residual_stage(block, p, s, n, **options)
                    for p, s, n in zip(planes, STAGE_STRIDES, layers, strict=True)],
            head=None, num_classes=num_classes, num_branches=num_branches,
            shared_stages=shared_stages, share_stem=share_stem, gate=gate, batched=batched)


def resnet18(**options) -> ONEImageNetResNet:
    """ONE ResNet-18 (basic blocks 2-2-2-2); options as :class:`ONEImageNetResNet`."""
    return ONEImageNetResNet("basic", (2, 2, 2, 2), **options)


def resnext50_32x4d(**options) -> ONEImageNetResNet:
    """ONE ResNeXt-50 32x4d (bottlenecks 3-4-6-3, 32 groups of 4); as :class:`ONEImageNetResNet`."""
    return ONEImageNetResNet("bottleneck", (3, 4, 6, 3), groups=32, base_width=4, **options)
