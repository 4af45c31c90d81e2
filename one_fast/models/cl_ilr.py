"""CL-ILR's tree of branches (Song & Chai 2018, as winycg/MCL-OKD's ``cl_ilr_resnet`` builds it).

Stem and stage 1 are shared; stage 2 has one copy per pair of branches (ceil(m/2) copies);
stage 3 and the classifier are per branch, branch i fed by pair i // 2. At every split the
activation goes forward unchanged and its gradient comes back divided by the number of children
(*intermediate-level representation sharing with backward rescaling*, that code's ``ILR``), so a
shared stage learns at the pace of one branch.

Batched like every one_fast network: stage 2 runs as one grouped stack over the ceil(m/2) pairs,
stage 3 as one over the m branches, fed by repeating each pair's channels for its children.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import ClassVar

import torch
from torch import nn

from .blocks import Stem
from .branched import BranchedBatchNorm2d, BranchedLinear
from .network import BranchedNetwork, check_bool, check_fixed_sharing, check_positive_int
from .resnet import STAGE_STRIDES, STAGE_WIDTHS, blocks_per_stage, residual_stage


class _RescaleGradient(torch.autograd.Function):
    """Identity forward; the gradient multiplied by ``scale`` (a number or a broadcastable
    tensor) on the way back."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        scale = ctx.scale
        if isinstance(scale, torch.Tensor):
            scale = scale.to(grad.dtype)
        return grad * scale, None


def rescale_gradient(x: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """``x`` unchanged, its gradient times ``scale`` (ILR with ``scale`` = 1 / children)."""
    return _RescaleGradient.apply(x, scale)


def pair_children(num_branches: int) -> list[int]:
    """How many branches each stage-2 copy feeds: [2, 2, ..., 2 or 1] (ceil(m/2) entries)."""
    return [min(2, num_branches - 2 * g) for g in range(math.ceil(num_branches / 2))]


class CLILRResNet(BranchedNetwork):
    """The CL-ILR tree of CIFAR ResNet branches (``create_model("resnet", layout="cl_ilr")``).

    Trunk: stem + stage 1. Stage 2: ``ceil(m/2)`` copies (``self.pairs``), the first taking the
    trunk output; stage 3, pooling and the classifier: m copies (``self.branches``,
    ``self.classifier``), branch i reading pair i // 2. Backward rescaling divides the gradient
    at the trunk output by ceil(m/2) and at each pair's output by its number of children (2, or
    1 for the last pair of an odd m). (The reference code divides by 2 at both splits whatever
    m is: the same for m = 3 and 4, the table's m.) No gate: ``forward`` returns uniform 1/m
    weights.

    ``batched=False`` runs each pair and each branch on its own slice of the parameters (the
    reference path, the reference code's loop); both paths leave the same state.

    Branch i alone is exactly the plain ResNet (m = 1) of the same depth and block:
    :meth:`branch_state_dict` gives it in the layout of the m = 1 tree.

    Args:
        depth, num_classes, block: as :class:`~one_fast.models.ONEResNet`.
        num_branches: m >= 1.
        shared_stages: must be 1 (stage 1 is the trunk, stage 2 the pairs).
        gate: must be False (CL-ILR has no gate).
        batched: run pairs and branches batched (True) or one after another (False).
        share_stem: must be True.

    Returns (from ``forward(x)``):
        ``(logits (N, m, num_classes), gate (N, m) = 1/m)``.
    """

    # The sharing this layout is (the factory builds with it; methods require it).
    FIXED_SHARING: ClassVar[Mapping[str, object]] = MappingProxyType(
        {"shared_stages": 1, "gate": False, "share_stem": True})

    def __init__(self, depth: int = 32, num_classes: int = 100, num_branches: int = 4,
                 block: str = "basic", shared_stages: int = 1, gate: bool = False,
                 batched: bool = True, share_stem: bool = True) -> None:
        nn.Module.__init__(self)
        check_positive_int("num_classes", num_classes)
        m = check_positive_int("num_branches", num_branches)
        check_bool("gate", gate)
        check_fixed_sharing("the CL-ILR tree shares the stem and stage 1 and has no gate",
                            self.FIXED_SHARING, shared_stages=shared_stages, gate=gate,
                            share_stem=share_stem)
        n = blocks_per_stage(depth, block)
        stages = [residual_stage(block, width, stride, n)
                  for width, stride in zip(STAGE_WIDTHS, STAGE_STRIDES, strict=True)]
        self.num_branches, self.num_classes = m, num_classes
        self.shared_stages, self.share_stem, self.batched = 1, True, batched
        self.gate_fc, self.gate_bn = None, None
        children = pair_children(m)
        self.num_pairs = len(children)

        self.stem = Stem(1, STAGE_WIDTHS[0])
        trunk, channels = stages[0](1, STAGE_WIDTHS[0], False)
        self.trunk = nn.Sequential(*trunk)
        self.trunk_channels = channels
        pairs, channels = stages[1](self.num_pairs, channels, True)
        self.pairs = nn.ModuleList(pairs)
        self.pair_channels = channels
        branches, channels = stages[2](m, channels, False)
        self.branches = nn.ModuleList(branches)
        self.classifier = BranchedLinear(m, channels, num_classes)
        # Which pair feeds each branch, and each branch's share of its pair's gradient.
        self.register_buffer("parent", torch.arange(m) // 2, persistent=False)
        share = torch.tensor([1.0 / children[i // 2] for i in range(m)])
        self.register_buffer("child_grad_scale",
                             share.repeat_interleave(self.pair_channels).view(1, -1, 1, 1),
                             persistent=False)

    def pooled_features(self, shared: torch.Tensor) -> torch.Tensor:
        """Every branch's pooled stage-3 features (N, m, D) from the stage-1 output."""
        shared = rescale_gradient(shared, 1.0 / self.num_pairs)
        if not self.batched:
            return self._features_one_by_one(shared)
        out = shared
        for layer in self.pairs:
            out = layer(out)  # (N, P*C2, H, W), pair-major
        n, _, h, w = out.shape
        out = out.view(n, self.num_pairs, self.pair_channels, h, w).index_select(1, self.parent)
        out = rescale_gradient(out.reshape(n, -1, h, w), self.child_grad_scale)
        for layer in self.branches:
            out = layer(out)
        return out.mean((2, 3)).reshape(n, self.num_branches, -1)

    def _features_one_by_one(self, shared: torch.Tensor) -> torch.Tensor:
        """The reference path: each pair on its slice, then each branch on its pair's output."""
        children = pair_children(self.num_branches)
        pair_out = []
        for g in range(self.num_pairs):
            out = shared
            for layer in self.pairs:
                out = layer.forward_branch(out, g)
            pair_out.append(rescale_gradient(out, 1.0 / children[g]))
        features = []
        for i in range(self.num_branches):
            out = pair_out[i // 2]
            for layer in self.branches:
                out = layer.forward_branch(out, i)
            features.append(out.mean((2, 3)))
        for module in [*self.pairs.modules(), *self.branches.modules()]:
            if isinstance(module, BranchedBatchNorm2d):
                module.count_batch()
        return torch.stack(features, 1)

    def branch_features(self, shared: torch.Tensor, i: int) -> torch.Tensor:
        """Branch i's pooled features (N, D): its pair's stage 2, then its own stage 3."""
        out = shared
        for layer in self.pairs:
            out = layer.forward_branch(out, i // 2)
        for layer in self.branches:
            out = layer.forward_branch(out, i)
        return out.mean((2, 3))

    def tensor_owner(self, name: str) -> str:
        """"trunk" (stem, stage 1), "pairs" (stage 2: ceil(m/2) chunks along dim 0) or
        "branches" (stage 3 and the classifier: m chunks)."""
        if name.split(".", 1)[0] == "pairs":
            return "pairs"
        return super().tensor_owner(name)

    def branch_chunk(self, owner: str, i: int) -> tuple[int, int]:
        """Branch i reads pair i // 2's chunk of stage 2: :meth:`branch_state_dict` then gives
        it in the layout of the m = 1 tree (the plain ResNet)."""
        if owner == "pairs":
            return self.num_pairs, i // 2
        return super().branch_chunk(owner, i)


__all__ = ["CLILRResNet", "pair_children", "rescale_gradient"]
