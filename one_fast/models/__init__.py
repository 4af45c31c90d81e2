"""ONE network definitions: ``create_model(arch, ...)`` builds any of :data:`ARCHS`;
``branch(model, at=...)`` makes a user's own classifier a ONE network."""

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
from .own import OwnBranchedNetwork, branch
from .resnet import ONEResNet
from .resnext import ONEResNeXt29
from .wrn import ONEWideResNet

__all__ = [
    "ARCHS", "LAYOUTS", "ArchOption", "ArchSpec", "BranchedNetwork", "CLILRResNet",
    "OKDDipResNet", "ONEDenseNetBC", "ONEImageNetResNet", "ONEResNeXt29", "ONEResNet",
    "ONEWideResNet", "OwnBranchedNetwork", "arch_defaults", "branch", "check_arch_options",
    "create_model",
]
