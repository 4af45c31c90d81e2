"""``create_model(arch, ...)``: the one entry point, and the registry of archs and their options.

    ARCHS["wrn"].options          # {"depth": ArchOption(28, "..."), "width": ..., ...}
    arch_defaults("wrn")          # {"depth": 28, "width": 10, "dropout": 0.0, ...}
    create_model("wrn", num_classes=10, depth=16, width=2)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from .cl_ilr import CLILRResNet
from .densenet import ONEDenseNetBC
from .imagenet import resnet18, resnext50_32x4d
from .network import BranchedNetwork
from .okddip import OKDDipResNet
from .resnet import ONEResNet
from .resnext import ONEResNeXt29
from .wrn import ONEWideResNet


@dataclass(frozen=True)
class ArchOption:
    """One option an arch takes: its default (whose type is the option's type) and a help line."""

    default: bool | int | float | str
    help: str


@dataclass(frozen=True)
class ArchSpec:
    """An architecture: how to build it, what it takes, what input it was designed for.

    Attributes:
        builder: called with the options plus ``num_classes`` and ``num_branches``.
        options: every option it takes (common ones included), by name.
        image_size: the input height/width of the published network (32 or 224); smaller or
            larger inputs run too (global average pooling).
        description: one line for help texts.
    """

    builder: Callable[..., BranchedNetwork]
    options: Mapping[str, ArchOption]
    image_size: int
    description: str


def _common(shared_stages: int) -> dict[str, ArchOption]:
    return {
        "shared_stages": ArchOption(
            shared_stages, f"stages in the shared trunk (0..{shared_stages}; {shared_stages} "
                           "= ONE: only the last stage is per branch)"),
        "gate": ArchOption(True, "learn the gate (False: uniform 1/m weights)"),
        "share_stem": ArchOption(True, "share the stem (False, with shared_stages=0: m fully "
                                       "independent networks)"),
    }


def _spec(builder, image_size: int, description: str, shared_stages: int,
          **options: ArchOption) -> ArchSpec:
    return ArchSpec(builder, MappingProxyType({**options, **_common(shared_stages)}),
                    image_size, description)


ARCHS: Mapping[str, ArchSpec] = MappingProxyType({
    "resnet": _spec(ONEResNet, 32, "CIFAR ResNet (He et al.); the ONE paper's ResNet-32/110", 2,
                    depth=ArchOption(32, "6n+2 for basic blocks, 9n+2 for bottlenecks"),
                    block=ArchOption("basic", "residual block: basic or bottleneck")),
    "wrn": _spec(ONEWideResNet, 32, "Wide ResNet WRN-depth-width (Zagoruyko & Komodakis)", 2,
                 depth=ArchOption(28, "6n+4"),
                 width=ArchOption(10, "widening factor"),
                 dropout=ArchOption(0.0, "dropout between a block's convolutions")),
    "resnext29": _spec(ONEResNeXt29, 32, "CIFAR ResNeXt-29 (Xie et al.), e.g. 8x64d", 2,
                       depth=ArchOption(29, "9n+2"),
                       cardinality=ArchOption(8, "groups of the grouped convolutions"),
                       base_width=ArchOption(64, "channels per group in the first stage"),
                       widen_factor=ArchOption(4, "first stage's output channels / 64")),
    "densenet_bc": _spec(ONEDenseNetBC, 32, "CIFAR DenseNet-BC (Huang et al.), compression 0.5",
                         2, depth=ArchOption(190, "6n+4"),
                         growth_rate=ArchOption(40, "growth rate k")),
    "resnet18": _spec(resnet18, 224, "ImageNet ResNet-18 (torchvision layout)", 3),
    "resnext50_32x4d": _spec(resnext50_32x4d, 224, "ImageNet ResNeXt-50 32x4d", 3),
})


# Branch layouts other than ONE's (shared trunk, m parallel branches), by layout and arch: the
# networks of the methods that need their own (CL-ILR's tree, OKDDip's peers and leader).
LAYOUTS: Mapping[str, Mapping[str, Callable[..., BranchedNetwork]]] = MappingProxyType({
    "one": MappingProxyType({}),
    "cl_ilr": MappingProxyType({"resnet": CLILRResNet}),
    "okddip": MappingProxyType({"resnet": OKDDipResNet}),
})
# The sharing each layout fixes (the defaults it builds with; other values are refused).
LAYOUT_SHARING: Mapping[str, Mapping[str, object]] = MappingProxyType({
    "one": MappingProxyType({}),
    "cl_ilr": CLILRResNet.FIXED_SHARING,
    "okddip": OKDDipResNet.FIXED_SHARING,
})


def _builder(arch: str, layout: str) -> Callable[..., BranchedNetwork]:
    """The class that builds ``arch`` in ``layout``; ValueError naming an unsupported pair."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of: {', '.join(LAYOUTS)}")
    if layout == "one":
        return ARCHS[arch].builder
    if arch not in LAYOUTS[layout]:
        raise ValueError(f"layout {layout!r} is built for arch {', '.join(LAYOUTS[layout])} "
                         f"only, got arch {arch!r}")
    return LAYOUTS[layout][arch]


def _arch_spec(arch: str) -> ArchSpec:
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of: {', '.join(ARCHS)}")
    return ARCHS[arch]


def arch_defaults(arch: str) -> dict[str, bool | int | float | str]:
    """Every option ``arch`` takes, with its default."""
    return {name: option.default for name, option in _arch_spec(arch).options.items()}


def check_arch_options(arch: str, options: Mapping[str, object]) -> None:
    """Raise ValueError naming the option if ``arch`` does not take it or its type is wrong.

    Values are checked against the default's type (an int where a float is expected is fine);
    ranges and forms (a WRN depth of 6n+4 ...) are checked by the arch when it is built.
    """
    spec = _arch_spec(arch)
    for name, value in options.items():
        if name not in spec.options:
            raise ValueError(f"option {name!r} is not taken by arch {arch!r} "
                             f"(it takes: {', '.join(sorted(spec.options)) or 'none'})")
        default = spec.options[name].default
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        else:
            ok = isinstance(value, type(default)) and not isinstance(value, bool)
        if not ok:
            raise ValueError(f"option {name!r} of arch {arch!r} must be a "
                             f"{type(default).__name__}, got {value!r}")


def create_model(arch: str, *, num_classes: int, num_branches: int = 3, layout: str = "one",
                 **options: object) -> BranchedNetwork:
    """Build a ONE network of architecture ``arch``.

    Args:
        arch: a key of :data:`ARCHS` ("resnet", "wrn", "resnext29", "densenet_bc", "resnet18",
            "resnext50_32x4d").
        num_classes: classifier outputs per branch.
        num_branches: m (1: the plain network).
        layout: how the branches are arranged (a key of :data:`LAYOUTS`): "one" (shared trunk,
            m parallel branches: every arch), "cl_ilr" (CL-ILR's tree: stage 2 per pair of
            branches) or "okddip" (m - 1 peers with attention and a leader), the last two for
            "resnet" only. A layout other than "one" is recorded in ``model.arch_options``.
        options: the arch's options (:func:`arch_defaults`); the others keep their defaults.

    Returns:
        A :class:`~one_fast.models.network.BranchedNetwork`: ``forward(x)`` gives
        ``(logits (N, m, num_classes), gate (N, m))``; ``model.batched = False`` runs the
        per-branch reference path. ``model.arch`` and ``model.arch_options`` (every option,
        defaults filled in) record how it was built, so the same network with another number
        of branches can be made again (export builds the m = 1 student from them).

    Raises:
        ValueError: unknown arch, an option the arch does not take or of the wrong type, or an
            invalid value (naming the option).
    """
    check_arch_options(arch, options)
    build = _builder(arch, layout)
    merged = {**arch_defaults(arch), **LAYOUT_SHARING[layout], **options}
    model = build(num_classes=num_classes, num_branches=num_branches, **merged)
    model.arch = arch
    model.arch_options = merged if layout == "one" else {**merged, "layout": layout}
    return model
