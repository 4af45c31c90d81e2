"""How to run the m branches of a user's network: vmap vs loop vs grouped-layer surgery.

    OMP_NUM_THREADS=1 python -m benchmarks.own_branch_bench [--batch 4] [--repeats 5]

The head of a ResNet-50 (layer4: three bottlenecks, 1024 -> 2048 channels, stride 2; average
pool; a 1000-way classifier), m = 3 branches on a shared (N, 1024, 14, 14) trunk output (a
224x224 image's), float32, train mode, one forward + backward:

* ``vmap``: :func:`one_fast.models.branch` as it runs (``torch.func.vmap`` over
  ``functional_call`` of the stacked heads);
* ``loop``: the same network with ``batched = False`` (one head after another);
* ``grouped``: module surgery -- the same weights in one_fast's own batched layers (the m
  branches' convolutions as one grouped convolution per layer, ``BranchedBatchNorm2d``,
  ``BranchedLinear``), what ``create_model``'s networks run.

Before timing, the three are checked to give the same logits. Prints a markdown table with the
machine, date and commit (the numbers in BENCHMARKS.md come from it).
"""

from __future__ import annotations

import argparse
import collections
import platform
import statistics
import time

import torch
from torch import nn

from one_fast.models import branch
from one_fast.models.branched import BranchedLinear
from one_fast.models.resnet import residual_stage

from .environment import cpu_model, environment, load_average

M, CLASSES = 3, 1000


class Bottleneck(nn.Module):
    """torchvision's ResNet-50 bottleneck (1x1 -> 3x3 stride -> 1x1 x4, projection shortcut)."""

    def __init__(self, inplanes: int, planes: int, stride: int) -> None:
        super().__init__()
        width, out = planes, planes * 4
        self.conv1, self.bn1 = nn.Conv2d(inplanes, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, out, 1, bias=False), nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride, bias=False),
                                            nn.BatchNorm2d(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


def resnet50_head() -> nn.Module:
    """ResNet-50 from its layer4 on (the trunk is the identity: the input is layer3's output)."""
    return nn.Sequential(collections.OrderedDict(
        trunk=nn.Identity(),
        layer4=nn.Sequential(Bottleneck(1024, 512, 2), Bottleneck(2048, 512, 1),
                             Bottleneck(2048, 512, 1)),
        avgpool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(), fc=nn.Linear(2048, CLASSES)))


class GroupedHead(nn.Module):
    """The m heads as one_fast's grouped layers, holding the weights of ``own``'s branches."""

    def __init__(self, own: nn.Module) -> None:
        super().__init__()
        modules, _ = residual_stage("bottleneck", 512, 2, 3)(M, 1024, True)
        self.blocks = nn.Sequential(*modules)
        self.classifier = BranchedLinear(M, 2048, CLASSES)
        stacked = own.state_dict()
        renamed = {"downsample.0": "shortcut_conv", "downsample.1": "shortcut_bn"}
        with torch.no_grad():
            for name, tensor in self.blocks.state_dict().items():
                source = "branches.layer4." + name
                for new, old in renamed.items():
                    source = source.replace(old, new)
                value = stacked[source]
                tensor.copy_(value.flatten(0, 1) if value.dim() > 1 else value.reshape(
                    tensor.shape) if tensor.dim() else value[0])
            self.classifier.weight.copy_(stacked["branches.fc.weight"])
            self.classifier.bias.copy_(stacked["branches.fc.bias"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.blocks(x).mean((2, 3)))  # (N, m, classes)


def step_seconds(module: nn.Module, x: torch.Tensor, repeats: int
                 ) -> tuple[list[float], list[float]]:
    """(wall times, this thread's CPU times) of forward + backward, after one warm-up step.

    With one torch thread the CPU time is the step's own work: on a shared machine it does not
    count the time other processes hold the core, which the wall time does.
    """
    walls, cpus = [], []
    for k in range(repeats + 1):
        module.zero_grad(set_to_none=True)
        wall, cpu = time.perf_counter(), time.thread_time()
        out = module(x)
        logits = out[0] if isinstance(out, tuple) else out
        logits.square().mean().backward()
        if k:
            walls.append(time.perf_counter() - wall)
            cpus.append(time.thread_time() - cpu)
    return walls, cpus


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    own = branch(resnet50_head, at="layer4", num_branches=M, gate=None)
    looped = branch(resnet50_head, at="layer4", num_branches=M, gate=None)
    looped.load_state_dict(own.state_dict())
    looped.batched = False
    grouped = GroupedHead(own)
    x = torch.randn(args.batch, 1024, 14, 14)
    with torch.no_grad():  # validate before timing (eval: no statistics move)
        reference = own.eval()(x)[0]
        torch.testing.assert_close(looped.eval()(x)[0], reference, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(grouped.eval()(x), reference, rtol=1e-4, atol=1e-4)
    env = environment()
    print(f"{cpu_model()} ({platform.machine()}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s), commit {env.get('commit')}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average "
          f"{load_average()}")
    print(f"ResNet-50 head (layer4 + pool + fc {CLASSES}), m = {M}, batch {args.batch}, "
          f"float32, train mode, forward + backward; median of {args.repeats}\n")
    print("| variant | median CPU time | min CPU time | median wall | × loop (CPU time) |\n"
          "|---|---:|---:|---:|---:|")
    rows = {}
    for name, module in (("loop", looped), ("vmap", own), ("grouped", grouped)):
        rows[name] = step_seconds(module.train(), x, args.repeats)
    base = statistics.median(rows["loop"][1])
    for name, (walls, cpus) in rows.items():
        median = statistics.median(cpus)
        print(f"| {name} | {median * 1e3:.0f} ms | {min(cpus) * 1e3:.0f} ms | "
              f"{statistics.median(walls) * 1e3:.0f} ms | {base / median:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
