"""winycg/MCL-OKD's CL-ILR and OKDDip CIFAR ResNets (models/cl_ilr_resnet.py,
models/okddip_resnet.py), restated for the CPU: same modules, names, parameter shapes and
forward; the unused options (groups, dilation, zero-init, norm_layer) are left out.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def conv3x3(cin, cout, stride=1):
    return nn.Conv2d(cin, cout, 3, stride, 1, bias=False)


def conv1x1(cin, cout, stride=1):
    return nn.Conv2d(cin, cout, 1, stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1, self.bn1 = conv3x3(inplanes, planes, stride), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = conv3x3(planes, planes), nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1, self.bn1 = conv1x1(inplanes, planes), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = conv3x3(planes, planes, stride), nn.BatchNorm2d(planes)
        self.conv3, self.bn3 = conv1x1(planes, planes * 4), nn.BatchNorm2d(planes * 4)
        self.downsample = downsample

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class ILR(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, num_branches):
        ctx.num_branches = num_branches
        return input

    @staticmethod
    def backward(ctx, grad_output):
        return grad_output / ctx.num_branches, None


class _Base(nn.Module):
    def __init__(self, block):
        super().__init__()
        self.block, self.inplanes = block, 16
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16)

    def _make_layer(self, planes, blocks, stride=1):
        block, downsample = self.block, None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(conv1x1(self.inplanes, planes * block.expansion, stride),
                                       nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)


class CLILRResNetReference(_Base):
    """cl_ilr_resnet's ResNet: layer2 per pair (ceil(m/2) copies), layer3 per branch."""

    def __init__(self, block, layers, number_net=4, num_classes=100):
        super().__init__(block)
        self.number_net = number_net
        self.layer1 = self._make_layer(16, layers[0])
        fix = self.inplanes
        for i in range(math.ceil(number_net / 2)):
            self.inplanes = fix
            setattr(self, f"layer2_{i}", self._make_layer(32, layers[1], 2))
        fix = self.inplanes
        for i in range(number_net):
            self.inplanes = fix
            setattr(self, f"layer3_{i}", self._make_layer(64, layers[2], 2))
            setattr(self, f"classifier_{i}", nn.Linear(64 * block.expansion, num_classes))

    def forward(self, x):
        x = self.layer1(F.relu(self.bn1(self.conv1(x))))
        x = ILR.apply(x, 2)
        x2, inputs = [], x
        for i in range(math.ceil(self.number_net / 2)):
            x = getattr(self, f"layer2_{i}")(inputs)
            if self.number_net - i * 2 >= 2:
                x = ILR.apply(x, 2)
                x2 += [x, x]
            else:
                x2.append(x)
        logits = []
        for i in range(self.number_net):
            x = F.adaptive_avg_pool2d(getattr(self, f"layer3_{i}")(x2[i]), 1).flatten(1)
            logits.append(getattr(self, f"classifier_{i}")(x))
        return logits


class OKDDipResNetReference(_Base):
    """okddip_resnet's ResNet: shared layers 1-2, layer3 + classifier per branch, attention
    over the first m - 1; returns (pro (N, C, m-1), x_m (N, C, m-1), leader (N, C))."""

    def __init__(self, block, layers, number_net=4, num_classes=100):
        super().__init__(block)
        self.number_net = number_net
        self.layer1 = self._make_layer(16, layers[0])
        self.layer2 = self._make_layer(32, layers[1], 2)
        fix = self.inplanes
        for i in range(number_net):
            self.inplanes = fix
            setattr(self, f"layer3_{i}", self._make_layer(64, layers[2], 2))
            setattr(self, f"classifier_{i}", nn.Linear(64 * block.expansion, num_classes))
        width = 64 * block.expansion
        self.query_weight = nn.Linear(width, width // 8, bias=False)
        self.key_weight = nn.Linear(width, width // 8, bias=False)

    def _branch(self, i, x):
        return F.adaptive_avg_pool2d(getattr(self, f"layer3_{i}")(x), 1).flatten(1)

    def forward(self, x):
        inp = self.layer2(self.layer1(F.relu(self.bn1(self.conv1(x)))))
        feats = [self._branch(i, inp) for i in range(self.number_net - 1)]
        pro = torch.stack([getattr(self, f"classifier_{i}")(f) for i, f in enumerate(feats)], -1)
        proj_q = torch.stack([self.query_weight(f) for f in feats], 1)
        proj_k = torch.stack([self.key_weight(f) for f in feats], 1)
        attention = F.softmax(torch.bmm(proj_q, proj_k.permute(0, 2, 1)), dim=-1)
        x_m = torch.bmm(pro, attention.permute(0, 2, 1))
        last = self.number_net - 1
        return pro, x_m, getattr(self, f"classifier_{last}")(self._branch(last, inp))
