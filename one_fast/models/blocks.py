"""Building blocks made of branched layers; ``num_branches=1`` gives ordinary trunk blocks.

This is the one mechanism every architecture's branches use: a block states its formula once
(``_run(x, apply, batched)``, calling each sub-layer through ``apply``) and is executed either
batched (``forward``: every layer one kernel for all m branches, activations branch-major
(N, m*C, H, W)) or for a single branch (``forward_branch``: every layer through its own
``forward_branch``, on that branch's slice of the parameters). Sub-layers may be the leaf layers
of ``branched.py`` or other :class:`BranchedModule` s (a dense block made of dense layers).

What a formula may contain: branched convolutions (grouped or not), branched BatchNorm,
element-wise operations, pooling and dropout on the activations, and channel concatenation
through :func:`cat_branches` (per branch, never across branches). What it may not: anything that
mixes channels of different branches outside those layers (a plain ``nn.Conv2d`` or
``torch.cat`` along channels of a branched tensor would silently couple branches).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .branched import BranchedBatchNorm2d, BranchedConv2d

Apply = Callable[[nn.Module, torch.Tensor], torch.Tensor]


def cat_branches(a: torch.Tensor, b: torch.Tensor, m: int) -> torch.Tensor:
    """Concatenate channels per branch: (N, m*Ca, H, W), (N, m*Cb, H, W) -> (N, m*(Ca+Cb), H, W).

    Branch i's output channels are its Ca channels of ``a`` followed by its Cb of ``b``, so the
    result stays branch-major (m = 1: the ordinary concatenation).
    """
    if m == 1:
        return torch.cat([a, b], 1)
    n, _, h, w = a.shape
    out = torch.cat([a.reshape(n, m, -1, h, w), b.reshape(n, m, -1, h, w)], 2)
    return out.reshape(n, -1, h, w)


class BranchedModule(nn.Module):
    """A formula over branched layers, run batched (``forward``) or per branch.

    Args:
        num_branches: m.
        shared_input: the input is the shared (N, C, H, W) trunk output seen by every branch
            rather than a branched (N, m*C, H, W) tensor.
    """

    def __init__(self, num_branches: int, shared_input: bool = False) -> None:
        super().__init__()
        self.num_branches = num_branches
        self.shared_input = shared_input

    def _run(self, x: torch.Tensor, apply: Apply, batched: bool) -> torch.Tensor:
        raise NotImplementedError

    def _per_branch_copy(self, x: torch.Tensor, batched: bool) -> torch.Tensor:
        """The shared input repeated per branch (batched path); unchanged otherwise.

        Needed where a branch's first operation is per-branch but not a convolution (BatchNorm
        of a pre-activation block, an identity shortcut, a concatenation).
        """
        if batched and self.shared_input and self.num_branches > 1:
            return x.repeat(1, self.num_branches, 1, 1)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x, lambda layer, t: layer(t), batched=True)

    def forward_branch(self, x: torch.Tensor, i: int) -> torch.Tensor:
        """Branch i alone: x is its (N, C, H, W) input (the shared input for a first block)."""
        return self._run(x, lambda layer, t: layer.forward_branch(t, i), batched=False)


class _ResidualBlock(BranchedModule):
    """Post-activation residual block: optional 1x1 projection shortcut (+ BN)."""

    def __init__(self, num_branches: int, in_channels: int, out_channels: int, stride: int,
                 shared_input: bool) -> None:
        super().__init__(num_branches, shared_input)
        self.shortcut_conv: BranchedConv2d | None = None
        self.shortcut_bn: BranchedBatchNorm2d | None = None
        if stride != 1 or in_channels != out_channels:
            # 1x1 projection + BN, as in the ONE authors' code ("downsample") and torchvision.
            self.shortcut_conv = BranchedConv2d(num_branches, in_channels, out_channels, 1,
                                                stride, shared_input)
            self.shortcut_bn = BranchedBatchNorm2d(num_branches, out_channels)

    def _shortcut(self, x: torch.Tensor, apply: Apply, batched: bool) -> torch.Tensor:
        if self.shortcut_conv is not None:
            return apply(self.shortcut_bn, apply(self.shortcut_conv, x))
        return self._per_branch_copy(x, batched)


class BasicBlock(_ResidualBlock):
    """3x3 -> 3x3 residual block (He et al.; CIFAR ResNets and ImageNet ResNet-18/34)."""

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


class Bottleneck(_ResidualBlock):
    """1x1 -> 3x3 (stride, ``groups``) -> 1x1 (x4) residual block.

    The inner width is ``int(planes * base_width / 64) * groups`` as in torchvision, so
    ``groups=1, base_width=64`` is the ResNet bottleneck (width = planes) and e.g.
    ``groups=32, base_width=4`` ResNeXt's 32x4d block; ``width`` sets it directly instead.
    """

    expansion = 4

    def __init__(self, num_branches: int, in_channels: int, planes: int, stride: int = 1,
                 shared_input: bool = False, groups: int = 1, base_width: int = 64,
                 width: int | None = None) -> None:
        super().__init__(num_branches, in_channels, planes * 4, stride, shared_input)
        if width is None:
            width = int(planes * base_width / 64) * groups
        self.conv1 = BranchedConv2d(num_branches, in_channels, width, 1, 1, shared_input)
        self.bn1 = BranchedBatchNorm2d(num_branches, width)
        self.conv2 = BranchedConv2d(num_branches, width, width, 3, stride, groups=groups)
        self.bn2 = BranchedBatchNorm2d(num_branches, width)
        self.conv3 = BranchedConv2d(num_branches, width, planes * 4, 1)
        self.bn3 = BranchedBatchNorm2d(num_branches, planes * 4)

    def _run(self, x: torch.Tensor, apply: Apply, batched: bool) -> torch.Tensor:
        out = F.relu(apply(self.bn1, apply(self.conv1, x)))
        out = F.relu(apply(self.bn2, apply(self.conv2, out)))
        out = apply(self.bn3, apply(self.conv3, out))
        return F.relu(out + self._shortcut(x, apply, batched))


BLOCKS: dict[str, type[_ResidualBlock]] = {"basic": BasicBlock, "bottleneck": Bottleneck}


class Stem(BranchedModule):
    """The image stem: conv (k x k, stride) [-> BN -> ReLU] [-> 3x3 max-pool, stride 2].

    Its input is always the image, shared by every branch (``num_branches=1`` for a shared stem).
    """

    def __init__(self, num_branches: int, out_channels: int, kernel_size: int = 3,
                 stride: int = 1, norm: bool = True, max_pool: bool = False,
                 in_channels: int = 3) -> None:
        super().__init__(num_branches, shared_input=True)
        self.conv = BranchedConv2d(num_branches, in_channels, out_channels, kernel_size, stride,
                                   shared_input=True)
        self.bn = BranchedBatchNorm2d(num_branches, out_channels) if norm else None
        self.max_pool = max_pool

    def _run(self, x: torch.Tensor, apply: Apply, batched: bool) -> torch.Tensor:
        out = apply(self.conv, x)
        if self.bn is not None:
            out = F.relu(apply(self.bn, out))
        if self.max_pool:
            out = F.max_pool2d(out, 3, 2, 1)
        return out


class BNReLU(BranchedModule):
    """BatchNorm -> ReLU: the head of pre-activation networks (WRN, DenseNet) before pooling."""

    def __init__(self, num_branches: int, channels: int, shared_input: bool = False) -> None:
        super().__init__(num_branches, shared_input)
        self.bn = BranchedBatchNorm2d(num_branches, channels)

    def _run(self, x: torch.Tensor, apply: Apply, batched: bool) -> torch.Tensor:
        return F.relu(apply(self.bn, self._per_branch_copy(x, batched)))
