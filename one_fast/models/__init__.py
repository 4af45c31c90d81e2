"""ONE network definitions: ``create_model(arch, ...)`` builds any of :data:`ARCHS`."""

from .cl_ilr import CLILRResNet
from .densenet import ONEDenseNetBC
from .factory import (
    ARCHS,
    LAYOUTS,
    ArchOption,
    ArchSpec,
    arch_defaults,
    check_arch_options,
    create_model,
)
from .imagenet import ONEImageNetResNet
from .network import BranchedNetwork
from .okddip import OKDDipResNet
from .resnet import ONEResNet
from .resnext import ONEResNeXt29
from .wrn import ONEWideResNet

__all__ = [
    "ARCHS", "LAYOUTS", "ArchOption", "ArchSpec", "BranchedNetwork", "CLILRResNet",
    "OKDDipResNet", "ONEDenseNetBC", "ONEImageNetResNet",
    "ONEResNeXt29", "ONEResNet", "ONEWideResNet", "arch_defaults", "check_arch_options",
    "create_model",
]
