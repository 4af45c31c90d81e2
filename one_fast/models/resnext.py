"""CIFAR ResNeXt-29 (Xie et al. 2017) as a ONE network."""

from __future__ import annotations

from .blocks import Stem
from .network import BranchedNetwork, check_positive_int
from .resnet import blocks_per_stage, residual_stage


class ONEResNeXt29(BranchedNetwork):
    """ONE CIFAR ResNeXt, ``cardinality`` x ``base_width``d (``create_model("resnext29")``).

    Stem 3x3 conv (64) + BN + ReLU; three stages of (depth - 2) / 9 bottleneck blocks with
    64 * widen_factor * (1, 2, 4) output channels (strides 1, 2, 2) whose grouped 3x3
    convolution is ``cardinality * base_width * 2**stage`` wide (the paper's CIFAR networks have
    widen factor 4: 256, 512, 1024); global average pool, classifier. The last stage +
    classifier is the branch; its grouped convolutions run as ``m * cardinality`` groups.

    Parameters (10 classes): ResNeXt-29 8x64d 34,426,698 with m = 1 (the published 34.4M),
    86,943,079 with m = 3.

    Args:
        depth: 9n + 2 (29 for the paper's network).
        cardinality: groups of each grouped convolution (8).
        base_width: channels per group in the first stage (64).
        widen_factor: output channels of the first stage / 64 (4).
        num_classes, num_branches, shared_stages, gate, batched, share_stem: as in
            :class:`~one_fast.models.network.BranchedNetwork` (shared_stages 0..2, default 2).
    """

    def __init__(self, depth: int = 29, cardinality: int = 8, base_width: int = 64,
                 widen_factor: int = 4, num_classes: int = 100, num_branches: int = 3,
                 shared_stages: int = 2, gate: bool = True, batched: bool = True,
                 share_stem: bool = True) -> None:
        n = blocks_per_stage(depth, "bottleneck")
        check_positive_int("cardinality", cardinality)
        check_positive_int("base_width", base_width)
        check_positive_int("widen_factor", widen_factor)
        super().__init__(
            stem=lambda m: (Stem(m, 64), 64),
            stages=[residual_stage("bottleneck", 16 * widen_factor << s, stride, n,
                                   groups=cardinality, width=cardinality * base_width << s)
                    for s, stride in enumerate((1, 2, 2))],
            head=None, num_classes=num_classes, num_branches=num_branches,
            shared_stages=shared_stages, share_stem=share_stem, gate=gate, batched=batched)
