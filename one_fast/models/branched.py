"""Layers that hold m branches' parameters in one tensor and run them batched or one by one.

A branched activation is stored branch-major along channels: (N, m*C, H, W), branch i owning
channels [i*C, (i+1)*C). The trunk output entering the first branched layer is *shared* (N, C,
H, W): a convolution of a shared input to m*C_out channels with ``groups=1`` is exactly the m
branch convolutions at once, and its weight (m*C_out, C_in, k, k) has the same shape as the
``groups=m`` weight used once activations are branched. So one parameter serves both cases.

``batched=True`` runs each layer as one kernel whatever m is; ``batched=False`` runs the same
parameters branch by branch through slices (the reference path). Both give the same numbers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def split_branches(x: torch.Tensor, m: int) -> list[torch.Tensor]:
    """(N, m*C, ...) -> m tensors (N, C, ...)."""
    return list(x.chunk(m, dim=1))


class BranchedConv2d(nn.Module):
    """m independent k×k convolutions (no bias), stored as one grouped-conv weight.

    Each branch's convolution may itself be grouped (``groups``, ResNeXt's cardinality): the
    batched kernel then runs ``m * groups`` groups, branch i owning groups [i*g, (i+1)*g).

    Args:
        num_branches: m.
        in_channels: input channels *per branch*.
        out_channels: output channels per branch.
        kernel_size: k (padding k // 2).
        stride: the convolution's stride.
        shared_input: the input is one (N, in, H, W) tensor seen by every branch (the trunk
            output) rather than a branched (N, m*in, H, W) tensor.
        groups: groups of each branch's own convolution.
    """

    def __init__(self, num_branches: int, in_channels: int, out_channels: int,
                 kernel_size: int, stride: int = 1, shared_input: bool = False,
                 groups: int = 1) -> None:
        super().__init__()
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"a convolution needs channels >= 1, got in_channels={in_channels}, "
                             f"out_channels={out_channels}")
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"groups={groups} must divide in_channels={in_channels} and "
                             f"out_channels={out_channels}")
        self.num_branches = num_branches
        self.out_channels = out_channels
        self.stride = stride
        self.padding = kernel_size // 2
        self.shared_input = shared_input
        self.groups = groups
        self.weight = nn.Parameter(torch.empty(
            num_branches * out_channels, in_channels // groups, kernel_size, kernel_size))
        # He et al. / the ONE authors' init: N(0, 2 / (k*k*out)) with out per branch.
        fan_out = kernel_size * kernel_size * out_channels
        nn.init.normal_(self.weight, 0.0, math.sqrt(2.0 / fan_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.num_branches
        if self.shared_input and self.groups == 1:
            # One dense conv of the shared input to m*out channels = the m branch convs.
            return F.conv2d(x, self.weight, None, self.stride, self.padding)
        if self.shared_input and m > 1:
            x = x.repeat(1, m, 1, 1)  # grouped per branch: each branch needs its own copy
        return F.conv2d(x, self.weight, None, self.stride, self.padding, 1, m * self.groups)

    def forward_branch(self, x: torch.Tensor, i: int) -> torch.Tensor:
        """Branch i alone: x is its (N, in, H, W) input (or the shared input)."""
        w = self.weight[i * self.out_channels:(i + 1) * self.out_channels]
        return F.conv2d(x, w, None, self.stride, self.padding, 1, self.groups)


class BranchedBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm over m*C channels; channel statistics are per channel, hence per branch."""

    def __init__(self, num_branches: int, channels: int) -> None:
        super().__init__(num_branches * channels)
        self.num_branches = num_branches
        self.branch_channels = channels

    def forward_branch(self, x: torch.Tensor, i: int) -> torch.Tensor:
        """Normalise branch i's (N, C, H, W) slice, updating its slice of the running stats.

        The module's ``num_batches_tracked`` is counted once per step by the caller through
        :meth:`count_batch`, so one batched forward and m branch forwards leave equal state.
        """
        s = slice(i * self.branch_channels, (i + 1) * self.branch_channels)
        training = self.training or self.running_mean is None
        return F.batch_norm(x, self.running_mean[s], self.running_var[s], self.weight[s],
                            self.bias[s], training, self.momentum, self.eps)

    def count_batch(self) -> None:
        if self.training and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)


class BranchedLinear(nn.Module):
    """m classifiers (C_in -> K each) applied as one batched matmul.

    Input (N, m*C_in) branch-major; output (N, m, K). Weight (m, K, C_in), bias (m, K).
    """

    def __init__(self, num_branches: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_branches, out_features, in_features))
        self.bias = nn.Parameter(torch.empty(num_branches, out_features))
        bound = 1.0 / math.sqrt(in_features)  # nn.Linear's default init, per branch
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m, k, c = self.weight.shape
        xb = x.reshape(x.shape[0], m, c).transpose(0, 1)  # (m, N, C_in)
        out = torch.baddbmm(self.bias.unsqueeze(1), xb, self.weight.transpose(1, 2))  # (m, N, K)
        return out.transpose(0, 1)  # (N, m, K)

    def forward_branch(self, x: torch.Tensor, i: int) -> torch.Tensor:
        """Branch i alone: (N, C_in) -> (N, K)."""
        return F.linear(x, self.weight[i], self.bias[i])
