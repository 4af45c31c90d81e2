"""CIFAR DenseNet-BC (Huang et al. 2017) as a ONE network."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .blocks import Apply, BNReLU, BranchedModule, Stem, cat_branches
from .branched import BranchedBatchNorm2d, BranchedConv2d
from .network import BranchedNetwork, StageBuilder, check_positive_int

COMPRESSION = 0.5


class DenseLayer(BranchedModule):
    """BN-ReLU-conv1x1 (4k) -> BN-ReLU-conv3x3 (k), its k new channels appended to the input.

    Batched, the input is (N, m*C, H, W) and the output (N, m*(C+k), H, W), concatenated per
    branch (:func:`~one_fast.models.blocks.cat_branches`) so it stays branch-major.
    """

    def __init__(self, num_branches: int, in_channels: int, growth_rate: int,
                 shared_input: bool) -> None:
        super().__init__(num_branches, shared_input)
        m, inner = num_branches, 4 * growth_rate
        self.bn1 = BranchedBatchNorm2d(m, in_channels)
        self.conv1 = BranchedConv2d(m, in_channels, inner, 1)
        self.bn2 = BranchedBatchNorm2d(m, inner)
        self.conv2 = BranchedConv2d(m, inner, growth_rate, 3)

    def _run(self, x: torch.Tensor, apply: Apply, batched: bool) -> torch.Tensor:
        x = self._per_branch_copy(x, batched)
        out = apply(self.conv1, F.relu(apply(self.bn1, x)))
        out = apply(self.conv2, F.relu(apply(self.bn2, out)))
        return cat_branches(x, out, self.num_branches if batched else 1)


class Transition(BranchedModule):
    """BN-ReLU-conv1x1 (compression) -> 2x2 average pool."""

    def __init__(self, num_branches: int, in_channels: int, out_channels: int) -> None:
        super().__init__(num_branches)
        self.bn = BranchedBatchNorm2d(num_branches, in_channels)
        self.conv = BranchedConv2d(num_branches, in_channels, out_channels, 1)

    def _run(self, x: torch.Tensor, apply: Apply, batched: bool) -> torch.Tensor:
        return F.avg_pool2d(apply(self.conv, F.relu(apply(self.bn, x))), 2)


def dense_stage(layers: int, growth_rate: int, transition: bool) -> StageBuilder:
    """A dense block of ``layers`` layers, followed by a transition unless it is the last."""

    def build(m: int, in_channels: int, shared_input: bool):
        modules: list[BranchedModule] = []
        for layer in range(layers):
            modules.append(DenseLayer(m, in_channels, growth_rate, shared_input and layer == 0))
            in_channels += growth_rate
        if transition:
            out = int(in_channels * COMPRESSION)
            modules.append(Transition(m, in_channels, out))
            in_channels = out
        return modules, in_channels

    return build


class ONEDenseNetBC(BranchedNetwork):
    """ONE DenseNet-BC-``depth``-``growth_rate`` for 32x32 images (``create_model("densenet_bc")``).

    Stem 3x3 conv (2k channels); three dense blocks of (depth - 4) / 6 bottleneck layers
    (BN-ReLU-conv1x1 4k, BN-ReLU-conv3x3 k), transitions with compression 0.5 and 2x2 average
    pooling between them; BN-ReLU, global average pool, classifier. The last dense block (with
    the final BN-ReLU and the classifier) is the branch; the gate reads the last transition's
    output. Each branch's concatenations are kept per branch (branch-major channels).

    Parameters (10 classes): DenseNet-BC-190-40 25,624,430 with m = 1 (the published 25.6M),
    44,839,109 with m = 3; DenseNet-BC-100-12 769,162 / 1,330,809.

    Args:
        depth: 6n + 4 (100, 190; 40 for a small one).
        growth_rate: k (12, 40).
        num_classes, num_branches, shared_stages, gate, batched, share_stem: as in
            :class:`~one_fast.models.network.BranchedNetwork` (shared_stages 0..2, default 2).
    """

    def __init__(self, depth: int = 190, growth_rate: int = 40, num_classes: int = 100,
                 num_branches: int = 3, shared_stages: int = 2, gate: bool = True,
                 batched: bool = True, share_stem: bool = True) -> None:
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
            raise ValueError("depth for arch 'densenet_bc' must be 6n+4 (40, 100, 190), "
                             f"got {depth!r}")
        check_positive_int("growth_rate", growth_rate)
        n = (depth - 4) // 6
        stem_channels = 2 * growth_rate
        super().__init__(
            stem=lambda m: (Stem(m, stem_channels, norm=False), stem_channels),
            stages=[dense_stage(n, growth_rate, transition=s < 2) for s in range(3)],
            head=lambda m, channels: [BNReLU(m, channels)],
            num_classes=num_classes, num_branches=num_branches, shared_stages=shared_stages,
            share_stem=share_stem, gate=gate, batched=batched)
