"""Small configurations of every arch and a recorded training step, shared by the model
tests."""

from __future__ import annotations

from one_fast.models import ONEImageNetResNet, create_model

# arch -> (options for create_model, image size). The ImageNet archs have no size options, so
# their small cases are the same classes narrowed (ResNet-18 with an 8-channel stem; ResNeXt-50
# with a 16-channel stem, 1 block per stage, 2 groups).
SMALL = {
    "resnet": (dict(depth=8), 16),
    "wrn": (dict(depth=10, width=2), 16),
    "resnext29": (dict(depth=11, cardinality=2, base_width=4, widen_factor=1), 16),
    "densenet_bc": (dict(depth=10, growth_rate=4), 16),
    "resnet18": ({}, 32),
    "resnext50_32x4d": ({}, 32),
}
ARCH_NAMES = list(SMALL)


def small_model(arch: str, num_branches: int, num_classes: int = 5, **options):
    """The small network of ``arch`` (the ImageNet ones narrowed, see SMALL)."""
    if arch == "resnet18":
        return ONEImageNetResNet("basic", (2, 2, 2, 2), width=8, num_classes=num_classes,
                                 num_branches=num_branches, **options)
    if arch == "resnext50_32x4d":
        return ONEImageNetResNet("bottleneck", (1, 1, 1, 1), groups=2, base_width=4, width=16,
                                 num_classes=num_classes, num_branches=num_branches, **options)
    return create_model(arch, num_classes=num_classes, num_branches=num_branches,
                        **SMALL[arch][0], **options)


def bn_state(model):
    """Copies of the BatchNorm running statistics and batch counters."""
    return {k: v.clone() for k, v in model.state_dict().items()
            if "running" in k or "num_batches" in k}


def train_step(model, x, y, batched, loss):
    """One backward pass in train mode on the batched (or per-branch) path.

    Returns:
        (logits, gate, {name: gradient}, BatchNorm state after the pass).
    """
    model.batched = batched
    model.train()
    logits, gate = model(x)
    loss(logits, gate, y).backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    return logits.detach(), gate.detach(), grads, bn_state(model)
