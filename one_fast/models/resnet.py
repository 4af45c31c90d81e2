"""Residual stages and the ONE CIFAR ResNet."""

from __future__ import annotations

from .blocks import BLOCKS, Stem
from .network import BranchedNetwork, StageBuilder

STAGE_WIDTHS = (16, 32, 64)
STAGE_STRIDES = (1, 2, 2)


def residual_stage(block: str, planes: int, stride: int, blocks: int,
                   **block_options: int) -> StageBuilder:
    """A stage of ``blocks`` residual blocks (the first with ``stride``) as a stage builder.

    Args:
        block: "basic" or "bottleneck".
        planes: the block's planes (output channels = planes * expansion).
        stride: stride of the stage's first block.
        blocks: blocks in the stage.
        block_options: passed to every block (``groups``, ``base_width`` of a bottleneck).
    """
    block_cls = BLOCKS[block]

    def build(m: int, in_channels: int, shared_input: bool):
        modules = []
        for b in range(blocks):
            modules.append(block_cls(m, in_channels, planes, stride if b == 0 else 1,
                                     shared_input and b == 0, **block_options))
            in_channels = planes * block_cls.expansion
        return modules, in_channels

    return build


def blocks_per_stage(depth: int, block: str) -> int:
    """n such that depth = 6n+2 (basic) or 9n+2 (bottleneck); clear error otherwise."""
    if block not in BLOCKS:
        raise ValueError(f"block must be one of {sorted(BLOCKS)}, got {block!r}")
    layers_per_block = 2 if block == "basic" else 3
    step = 3 * layers_per_block
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < step + 2 \
            or (depth - 2) % step:
        form = "6n+2 (20, 32, 44, 56, 110)" if block == "basic" else "9n+2 (e.g. 164)"
        raise ValueError(f"depth for block={block!r} must be {form}, got {depth!r}")
    return (depth - 2) // step


class ONEResNet(BranchedNetwork):
    """ONE (On-the-fly Native Ensemble) ResNet for 32x32 images (``create_model("resnet")``).

    Stem (3x3 conv, BN, ReLU) and stages 1..``shared_stages`` form the shared trunk; every later
    stage plus global average pooling and the classifier is replicated per branch, and the gate
    reads the trunk output (see :class:`~one_fast.models.network.BranchedNetwork`).

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
            ablations.
        gate: learn the gate; False gives uniform 1/m weights (the "no gate" ablation).
        batched: run branches batched (True) or one after another (False).
        share_stem: False makes the stem conv and BN per branch too (needs
            ``shared_stages=0``): m fully independent networks.

    Returns (from ``forward(x)``, x of shape (N, 3, 32, 32)):
        ``(logits, gate)``: logits (N, m, num_classes); gate (N, m), rows summing to 1.
    """

    def __init__(self, depth: int = 32, num_classes: int = 100, num_branches: int = 3,
                 block: str = "basic", shared_stages: int = 2, gate: bool = True,
                 batched: bool = True, share_stem: bool = True) -> None:
        n = blocks_per_stage(depth, block)
        super().__init__(
            stem=lambda m: (Stem(m, STAGE_WIDTHS[0]), STAGE_WIDTHS[0]),
            stages=[residual_stage(block, width, stride, n)
                    for width, stride in zip(STAGE_WIDTHS, STAGE_STRIDES, strict=True)],
            head=None, num_classes=num_classes, num_branches=num_branches,
            shared_stages=shared_stages, share_stem=share_stem, gate=gate, batched=batched)
