"""Batched vs looped branches for every architecture family: training-step throughput (images/s)
and forward FLOPs per image.

For each arch of ``one_fast.models.ARCHS``, one eager training step — forward, ONE loss
(reference backend), backward, SGD update — with the m = 3 branch stacks run batched (grouped
convolutions, one kernel per layer) and looped (``model.batched = False``: the same parameters
branch by branch, as the ONE authors' code runs). Grouped convolutions behave very differently
for plain convs, ResNeXt's own groups (m x cardinality groups) and DenseNet's many thin layers,
so the ratio is measured per family. Batches are synthetic, of the arch's input shape, already
on the device (``one_fast.data``'s loader, augmented there).

CUDA: the paper's sizes (ResNet-32, WRN-28-10, ResNeXt-29 8x64d, DenseNet-BC-190-40 on 32x32,
batch 128, DenseNet 64; ResNet-18 and ResNeXt-50 32x4d on 224x224, batch 64), bf16 autocast and
channels_last as the engine runs on CUDA, 100 classes. CPU: tiny variants of each family on
32x32, batch 16, float32 (the ImageNet families narrowed to a 16-channel stem, same blocks).
Before timing, both variants' losses on the first batch are checked to agree.

On a shared CPU run it with one thread (``OMP_NUM_THREADS=1``, as ``gpu_check.sh`` does): with
two threads on two busy cores, OpenMP barriers stalled some steps by 10-70x in our runs.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from one_fast import ONELoss
from one_fast.data import load_synthetic, loaders_for
from one_fast.models import ARCHS, ONEImageNetResNet, create_model

from .environment import DEVICE, LABEL, is_cuda
from .harness import measure

NUM_CLASSES = 100
BRANCHES = 3
BATCHES = 4  # distinct device-resident batches the steps cycle through

# arch -> (options, image size, batch) at the paper's sizes (CUDA).
PAPER = {
    "resnet": (dict(depth=32), 32, 128),
    "wrn": (dict(depth=28, width=10), 32, 128),
    "resnext29": (dict(cardinality=8, base_width=64), 32, 128),
    "densenet_bc": (dict(depth=190, growth_rate=40), 32, 64),
    "resnet18": ({}, 224, 64),
    "resnext50_32x4d": ({}, 224, 64),
}
# arch -> (options, image size, batch): tiny variants (CPU).
TINY = {
    "resnet": (dict(depth=8), 32, 16),
    "wrn": (dict(depth=10, width=2), 32, 16),
    "resnext29": (dict(depth=11, cardinality=4, base_width=4, widen_factor=1), 32, 16),
    "densenet_bc": (dict(depth=22, growth_rate=6), 32, 16),
    "resnet18": (dict(block="basic", layers=(1, 1, 1, 1), width=16), 32, 16),
    "resnext50_32x4d": (dict(block="bottleneck", layers=(1, 1, 1, 1), groups=8, base_width=4,
                             width=16), 32, 16),
}
SIZES = PAPER if is_cuda() else TINY


def build_model(arch: str) -> torch.nn.Module:
    """The arch at this platform's size, on the device (channels_last on CUDA)."""
    torch.manual_seed(0)
    options = SIZES[arch][0]
    if not is_cuda() and ARCHS[arch].image_size == 224:
        model = ONEImageNetResNet(num_classes=NUM_CLASSES, num_branches=BRANCHES, **options)
    else:
        model = create_model(arch, num_classes=NUM_CLASSES, num_branches=BRANCHES, **options)
    memory_format = torch.channels_last if is_cuda() else torch.contiguous_format
    return model.to(DEVICE, memory_format=memory_format)


def device_batches(size: int, batch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    data = load_synthetic(NUM_CLASSES, num_train=batch * BATCHES, num_test=batch, seed=0,
                          image_size=size)
    loader, _ = loaders_for(data, batch, device=DEVICE, seed=0, channels_last=is_cuda())
    return list(loader.epoch_batches(0))


def forward_flops(model: torch.nn.Module, image: torch.Tensor) -> int:
    """FLOPs (2 x multiply-adds) of one image's forward pass."""
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(image)
    model.train()
    return counter.get_total_flops()


def make_step(model, criterion):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    autocast = (lambda: torch.autocast("cuda", torch.bfloat16)) if is_cuda() \
        else contextlib.nullcontext

    def step(images, labels):
        with autocast():
            logits, gate = model(images)
        loss = criterion(logits.float(), gate.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


def _params() -> list:
    return [pytest.param(arch, batched, id=f"{LABEL.lower()}-{arch}-"
                         f"{'batched' if batched else 'looped'}")
            for arch in ARCHS for batched in (True, False)]


@pytest.mark.parametrize("arch,batched", _params())
def test_arch_train_step(benchmark, arch: str, batched: bool):
    """Time one training step of ``arch`` with its branches batched or looped."""
    _, size, batch = SIZES[arch]
    model = build_model(arch)
    batches = device_batches(size, batch)
    flops = forward_flops(model, batches[0][0][:1])
    criterion = ONELoss(backend="reference")

    # Validate before timing: both paths give the same loss on the first batch (a copy of the
    # model, so the timed model starts untouched).
    probe = build_model(arch)
    with torch.no_grad():
        losses = []
        for flag in (True, False):
            probe.batched = flag
            logits, gate = probe(batches[0][0])
            losses.append(criterion(logits.float(), gate.float(), batches[0][1]))
    tol = dict(rtol=2e-2, atol=2e-2) if is_cuda() else dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(losses[0], losses[1], **tol)
    del probe

    model.batched = batched
    step = make_step(model, criterion)
    first = step(*batches[0])
    assert torch.isfinite(first), f"{arch}: non-finite loss in warm-up"

    benchmark.group = f"{LABEL} arch train step {arch} m={BRANCHES} batch {batch} {size}px"
    timing = measure(benchmark, lambda i: step(*batches[i]), len(batches), warmup=1,
                     min_rounds=3, max_rounds=50 if is_cuda() else 5)
    loss = step(*batches[0])
    assert torch.isfinite(loss), f"{arch}: non-finite loss while timing"
    benchmark.extra_info.update(
        case=f"arch {arch} {'batched' if batched else 'looped'}", kind="arch_step", arch=arch,
        options={k: str(v) for k, v in SIZES[arch][0].items()}, image_size=size, batch=batch,
        branches=BRANCHES, classes=NUM_CLASSES, batched=batched,
        parameters=sum(p.numel() for p in model.parameters()),
        forward_flops_per_image=flops, amp="bf16" if is_cuda() else "none",
        channels_last=is_cuda(), loss=float(loss))
    if timing is not None:
        benchmark.extra_info.update(timing.as_info(), images_per_s=batch / timing.median_s)
