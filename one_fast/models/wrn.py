"""Wide ResNet (Zagoruyko & Komodakis 2016) for 32x32 images, as a ONE network."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .blocks import Apply, BNReLU, BranchedModule, Stem
from .branched import BranchedBatchNorm2d, BranchedConv2d
from .network import BranchedNetwork, StageBuilder, check_positive_int


class WideBlock(BranchedModule):
    """Pre-activation block: BN-ReLU-conv3x3(stride)-BN-ReLU-dropout-conv3x3, plus a shortcut.

    When the shape changes the shortcut is a 1x1 conv of the *pre-activated* input, otherwise the
    input itself (as in the authors' code).
    """

    def __init__(self, num_branches: int, in_channels: int, out_channels: int, stride: int,
                 shared_input: bool, dropout: float) -> None:
        super().__init__(num_branches, shared_input)
        m = num_branches
        self.bn1 = BranchedBatchNorm2d(m, in_channels)
        self.conv1 = BranchedConv2d(m, in_channels, out_channels, 3, stride)
        self.bn2 = BranchedBatchNorm2d(m, out_channels)
        self.conv2 = BranchedConv2d(m, out_channels, out_channels, 3)
        self.shortcut: BranchedConv2d | None = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = BranchedConv2d(m, in_channels, out_channels, 1, stride)
        self.dropout = dropout

    def _run(self, x: torch.Tensor, apply: Apply, batched: bool) -> torch.Tensor:
        x = self._per_branch_copy(x, batched)  # BN1 is per branch
        act = F.relu(apply(self.bn1, x))
        out = F.relu(apply(self.bn2, apply(self.conv1, act)))
        out = F.dropout(out, self.dropout, self.training)
        out = apply(self.conv2, out)
        return out + (apply(self.shortcut, act) if self.shortcut is not None else x)


def wide_stage(out_channels: int, stride: int, blocks: int, dropout: float) -> StageBuilder:
    """A group of ``blocks`` wide blocks, the first with ``stride``."""

    def build(m: int, in_channels: int, shared_input: bool):
        modules = []
        for b in range(blocks):
            modules.append(WideBlock(m, in_channels, out_channels, stride if b == 0 else 1,
                                     shared_input and b == 0, dropout))
            in_channels = out_channels
        return modules, in_channels

    return build


class ONEWideResNet(BranchedNetwork):
    """ONE Wide ResNet WRN-``depth``-``width`` for 32x32 images (``create_model("wrn")``).

    Stem 3x3 conv (16 channels), three groups of (depth - 4) / 6 pre-activation wide blocks of
    16k, 32k, 64k channels (k = ``width``; strides 1, 2, 2), then BN-ReLU, global average pool,
    classifier. Convolutions have no bias. The last group + BN-ReLU + classifier is the branch.

    Parameters (10 classes, the defaults otherwise): WRN-28-10 36,479,194 with m = 1 (the
    published 36.5M), 92,220,343 with m = 3; WRN-16-2 (100 classes) 703,284 / 1,780,165.

    Args:
        depth: 6n + 4 (16, 22, 28, 40).
        width: widening factor k.
        dropout: dropout probability between a block's two convolutions (0.3 in the WRN paper's
            dropout rows; 0 by default).
        num_classes, num_branches, shared_stages, gate, batched, share_stem: as in
            :class:`~one_fast.models.network.BranchedNetwork` (shared_stages 0..2, default 2).
    """

    def __init__(self, depth: int = 28, width: int = 10, dropout: float = 0.0,
                 num_classes: int = 100, num_branches: int = 3, shared_stages: int = 2,
                 gate: bool = True, batched: bool = True, share_stem: bool = True) -> None:
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
            raise ValueError(f"depth for arch 'wrn' must be 6n+4 (16, 22, 28, 40), got {depth!r}")
        check_positive_int("width", width)
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) \
                or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
        n = (depth - 4) // 6
        widths = (16 * width, 32 * width, 64 * width)
        super().__init__(
            stem=lambda m: (Stem(m, 16, norm=False), 16),
            stages=[wide_stage(w, s, n, float(dropout))
                    for w, s in zip(widths, (1, 2, 2), strict=True)],
            head=lambda m, channels: [BNReLU(m, channels)],
            num_classes=num_classes, num_branches=num_branches, shared_stages=shared_stages,
            share_stem=share_stem, gate=gate, batched=batched)
