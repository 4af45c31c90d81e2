"""The ONE network: CIFAR ResNet trunk, m branch stacks batched as grouped convolutions, a gate."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import BLOCKS
from .branched import BranchedBatchNorm2d, BranchedConv2d, BranchedLinear

STAGE_WIDTHS = (16, 32, 64)
STAGE_STRIDES = (1, 2, 2)


def blocks_per_stage(depth: int, block: str) -> int:
    """n such that depth = 6n+2 (basic) or 9n+2 (bottleneck); clear error otherwise."""
    if block not in BLOCKS:
        raise ValueError(f"block must be one of {sorted(BLOCKS)}, got {block!r}")
    layers_per_block = 2 if block == "basic" else 3
    step = 3 * layers_per_block
    if not isinstance(depth, int) or depth < step + 2 or (depth - 2) % step:
        form = "6n+2 (20, 32, 44, 56, 110)" if block == "basic" else "9n+2 (e.g. 164)"
        raise ValueError(f"depth for block={block!r} must be {form}, got {depth!r}")
    return (depth - 2) // step


class ONEResNet(nn.Module):
    """ONE (On-the-fly Native Ensemble) ResNet for 32x32 images.

    Stem conv and stages 1..``shared_stages`` form the shared trunk; every later stage plus global
    average pooling and the classifier is replicated per branch. A gate on the trunk output
    (global average pool -> Linear(channels, m) -> BatchNorm1d(m) -> ReLU -> softmax, as in the
    authors' code) weights the branch logits into the ensemble teacher.

    The m branch stacks run as one stack of grouped convolutions (m*channels wide, ``groups=m``),
    BatchNorm over the m*channels, and the m classifiers as one batched matmul: one kernel per
    layer whatever m is. Setting ``model.batched = False`` at any time runs the same parameters
    branch by branch (the reference path); the ``state_dict`` is the same either way.

    Note: the ONE authors' public code calls the network with 18 bottleneck blocks per stage
    "ResNet-110"; in this class that is ``depth=164, block="bottleneck"`` (164 layers). With
    m=3 branches and 100 classes it has 4,363,653 parameters (1,727,284 with m=1); the basic-block
    ResNet-32 ONE (m=3, 100 classes) has 1,193,189 (472,756 with m=1).

    Args:
        depth: 6n+2 for ``block="basic"`` (20, 32, 44, 56, 110), 9n+2 for "bottleneck" (164).
        num_classes: classifier outputs per branch.
        num_branches: m; 1 gives the plain baseline network.
        block: "basic" or "bottleneck".
        shared_stages: stages in the trunk: 2 is the paper's ONE; 1 and 0 the less-shared
            ablations (the stem is always shared).
        gate: learn the gate; False gives uniform 1/m weights (the "no gate" ablation).
        batched: run branches batched (True) or one after another (False).

    Returns (from ``forward(x)``, x of shape (N, 3, 32, 32)):
        ``(logits, gate)``: logits (N, m, num_classes); gate (N, m), rows summing to 1.
    """

    def __init__(self, depth: int = 32, num_classes: int = 100, num_branches: int = 3,
                 block: str = "basic", shared_stages: int = 2, gate: bool = True,
                 batched: bool = True) -> None:
        super().__init__()
        n = blocks_per_stage(depth, block)
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        if not isinstance(num_branches, int) or num_branches < 1:
            raise ValueError(f"num_branches must be a positive int, got {num_branches!r}")
        if shared_stages not in (0, 1, 2):
            raise ValueError(f"shared_stages must be 0, 1 or 2, got {shared_stages!r}")
        block_cls = BLOCKS[block]
        self.num_branches = num_branches
        self.num_classes = num_classes
        self.batched = batched

        self.stem_conv = BranchedConv2d(1, 3, STAGE_WIDTHS[0], 3)
        self.stem_bn = BranchedBatchNorm2d(1, STAGE_WIDTHS[0])
        channels = STAGE_WIDTHS[0]
        trunk: list[nn.Module] = []
        branch: list[nn.Module] = []
        for stage, (width, stride) in enumerate(zip(STAGE_WIDTHS, STAGE_STRIDES, strict=True)):
            shared = stage < shared_stages
            m = 1 if shared else num_branches
            for b in range(n):
                first_branched = not shared and not branch
                layer = block_cls(m, channels, width, stride if b == 0 else 1, first_branched)
                (trunk if shared else branch).append(layer)
                channels = width * block_cls.expansion
            if stage == shared_stages - 1:
                self.trunk_channels = channels
        if shared_stages == 0:
            self.trunk_channels = STAGE_WIDTHS[0]
        self.trunk = nn.Sequential(*trunk)
        self.branches = nn.ModuleList(branch)
        self.classifier = BranchedLinear(num_branches, channels, num_classes)

        self.gate_fc: nn.Linear | None = None
        self.gate_bn: nn.BatchNorm1d | None = None
        if gate and num_branches > 1:
            self.gate_fc = nn.Linear(self.trunk_channels, num_branches)
            self.gate_bn = nn.BatchNorm1d(num_branches)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shared = self.trunk(F.relu(self.stem_bn(self.stem_conv(x))))
        gate = self._gate(shared)
        if self.batched:
            out = shared
            for layer in self.branches:
                out = layer(out)
            logits = self.classifier(out.mean((2, 3)))  # (N, m, K)
        else:
            logits = torch.stack([self._branch(shared, i) for i in range(self.num_branches)], 1)
            for module in self.branches.modules():
                if isinstance(module, BranchedBatchNorm2d):
                    module.count_batch()
        return logits, gate

    def _branch(self, shared: torch.Tensor, i: int) -> torch.Tensor:
        out = shared
        for layer in self.branches:
            out = layer.forward_branch(out, i)
        return self.classifier.forward_branch(out.mean((2, 3)), i)

    def _gate(self, shared: torch.Tensor) -> torch.Tensor:
        n, m = shared.shape[0], self.num_branches
        if self.gate_fc is None:
            return shared.new_full((n, m), 1.0 / m)
        g = F.relu(self.gate_bn(self.gate_fc(shared.mean((2, 3)))))
        return F.softmax(g, dim=1)
