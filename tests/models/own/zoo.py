"""Networks written the way torchvision writes them (torchvision itself does not load beside the
CPU build of torch CI uses): a ResNet with conv1/bn1/layer1..4/fc and a MobileNet-V3-like net
with squeeze-excitation, hard-swish and dropout. Also importable by the trainer as
``--arch module:tests.models.own.zoo:resnet``."""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision's ResNet layout (one block per stage); ``stem_stride=1`` without max-pool for
    small images."""

    def __init__(self, num_classes: int = 10, width: int = 8, stem_stride: int = 2) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7 if stem_stride == 2 else 3, stem_stride,
                               3 if stem_stride == 2 else 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1) if stem_stride == 2 else nn.Identity()
        self.layer1 = BasicBlock(width, width)
        self.layer2 = BasicBlock(width, 2 * width, 2)
        self.layer3 = BasicBlock(2 * width, 4 * width, 2)
        self.layer4 = BasicBlock(4 * width, 8 * width, 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(8 * width, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet(num_classes: int = 10, width: int = 8, stem_stride: int = 2) -> ResNet:
    """The trainer's factory (``--arch module:tests.models.own.zoo:resnet``)."""
    return ResNet(num_classes, width, stem_stride)


class SqueezeExcitation(nn.Module):
    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.relu = nn.ReLU()
        self.scale_activation = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.scale_activation(self.fc2(self.relu(self.fc1(self.avgpool(x)))))
        return scale * x


def conv_bn_act(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.Hardswish())


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, expanded: int, cout: int, stride: int) -> None:
        super().__init__()
        self.use_res_connect = stride == 1 and cin == cout
        self.block = nn.Sequential(
            conv_bn_act(cin, expanded, 1),
            conv_bn_act(expanded, expanded, 3, stride, groups=expanded),
            SqueezeExcitation(expanded, max(8, expanded // 4)),
            nn.Sequential(nn.Conv2d(expanded, cout, 1, bias=False), nn.BatchNorm2d(cout)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return out + x if self.use_res_connect else out


class MobileNetLike(nn.Module):
    """torchvision's MobileNetV3 layout: ``features`` (0: stem, 1..4: inverted residuals with
    SE, 5: last conv), ``avgpool``, ``classifier`` with dropout."""

    def __init__(self, num_classes: int = 10, dropout: float = 0.2) -> None:
        super().__init__()
        self.features = nn.Sequential(
            conv_bn_act(3, 8, 3, 2),
            InvertedResidual(8, 16, 8, 1),
            InvertedResidual(8, 24, 12, 2),
            InvertedResidual(12, 36, 12, 1),
            InvertedResidual(12, 48, 16, 2),
            conv_bn_act(16, 48, 1))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(48, 32), nn.Hardswish(),
                                        nn.Dropout(dropout), nn.Linear(32, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier(x)


def mobilenet(num_classes: int = 10, dropout: float = 0.2) -> MobileNetLike:
    """The MobileNet-like net's factory."""
    return MobileNetLike(num_classes, dropout)
