"""ONE network definitions."""

from .resnet import ONEResNet

__all__ = ["ONEResNet"]
