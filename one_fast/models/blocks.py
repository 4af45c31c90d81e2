"""ResNet blocks built from branched layers; ``num_branches=1`` gives ordinary trunk blocks.

Each block states its formula once (``_run``) and is executed either batched (every layer one
kernel for all branches) or for a single branch through the layers' ``forward_branch``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .branched import BranchedBatchNorm2d, BranchedConv2d

Apply = Callable[[nn.Module, torch.Tensor], torch.Tensor]


class _BranchedBlock(nn.Module):
    """Shared plumbing: optional projection shortcut and the two execution paths."""

    def __init__(self, num_branches: int, in_channels: int, out_channels: int, stride: int,
                 shared_input: bool) -> None:
        super().__init__()
        self.num_branches = num_branches
        self.shared_input = shared_input
        self.shortcut_conv: BranchedConv2d | None = None
        self.shortcut_bn: BranchedBatchNorm2d | None = None
        if stride != 1 or in_channels != out_channels:
            # 1x1 projection + BN, as in the ONE authors' code ("downsample").
            self.shortcut_conv = BranchedConv2d(num_branches, in_channels, out_channels, 1,
                                                stride, shared_input)
            self.shortcut_bn = BranchedBatchNorm2d(num_branches, out_channels)

    def _shortcut(self, x: torch.Tensor, apply: Apply, batched: bool) -> torch.Tensor:
        if self.shortcut_conv is not None:
            return apply(self.shortcut_bn, apply(self.shortcut_conv, x))
        if batched and self.shared_input and self.num_branches > 1:
            return x.repeat(1, self.num_branches, 1, 1)  # shared trunk output -> every branch
        return x

    def _run(self, x: torch.Tensor, apply: Apply, batched: bool) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x, lambda layer, t: layer(t), batched=True)

    def forward_branch(self, x: torch.Tensor, i: int) -> torch.Tensor:
        """Branch i alone: x is its (N, C, H, W) input (the shared input for a first block)."""
        return self._run(x, lambda layer, t: layer.forward_branch(t, i), batched=False)


class BasicBlock(_BranchedBlock):
    """3x3 -> 3x3 residual block (He et al. CIFAR ResNets)."""

    expansion = 1

    def __init__(self, num_branches: int, in_channels: int, planes: int, stride: int = 1,
                 shared_input: bool = False) -> None:
        super().__init__(num_branches, in_channels, planes, stride, shared_input)
        self.conv1 = BranchedConv2d(num_branches, in_channels, planes, 3, stride, shared_input)
        self.bn1 = BranchedBatchNorm2d(num_branches, planes)
        self.conv2 = BranchedConv2d(num_branches, planes, planes, 3)
        self.bn2 = BranchedBatchNorm2d(num_branches, planes)

    def _run(self, x: torch.Tensor, apply: Apply, batched: bool) -> torch.Tensor:
        out = F.relu(apply(self.bn1, apply(self.conv1, x)))
        out = apply(self.bn2, apply(self.conv2, out))
        return F.relu(out + self._shortcut(x, apply, batched))


class Bottleneck(_BranchedBlock):
    """1x1 -> 3x3 -> 1x1 (x4) residual block."""

    expansion = 4

    def __init__(self, num_branches: int, in_channels: int, planes: int, stride: int = 1,
                 shared_input: bool = False) -> None:
        super().__init__(num_branches, in_channels, planes * 4, stride, shared_input)
        self.conv1 = BranchedConv2d(num_branches, in_channels, planes, 1, 1, shared_input)
        self.bn1 = BranchedBatchNorm2d(num_branches, planes)
        self.conv2 = BranchedConv2d(num_branches, planes, planes, 3, stride)
        self.bn2 = BranchedBatchNorm2d(num_branches, planes)
        self.conv3 = BranchedConv2d(num_branches, planes, planes * 4, 1)
        self.bn3 = BranchedBatchNorm2d(num_branches, planes * 4)

    def _run(self, x: torch.Tensor, apply: Apply, batched: bool) -> torch.Tensor:
        out = F.relu(apply(self.bn1, apply(self.conv1, x)))
        out = F.relu(apply(self.bn2, apply(self.conv2, out)))
        out = apply(self.bn3, apply(self.conv3, out))
        return F.relu(out + self._shortcut(x, apply, batched))


BLOCKS: dict[str, type[_BranchedBlock]] = {"basic": BasicBlock, "bottleneck": Bottleneck}
