"""``branch(model, at=...)``: any PyTorch classifier as a ONE network."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from ..network import check_bool, check_positive_int
from .gate import ONEGate
from .network import OwnBranchedNetwork, stack_heads
from .split import split
from .tracing import SUPPORTED

# Relative size of the noise that makes copied heads differ (see branch()).
PERTURBATION = 0.1
GATES = ("one", None)


def _first_width(model: nn.Module) -> int | None:
    """The input width of the model's first layer that states one (its image channels)."""
    for module in model.modules():
        for attribute in ("in_channels", "in_features"):
            value = getattr(module, attribute, None)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
    return None


def _perturbed(state: dict[str, torch.Tensor], parameters: set[str],
               generator: torch.Generator) -> dict[str, torch.Tensor]:
    """A copy of ``state`` with N(0, (PERTURBATION * std)^2) noise on every float parameter of
    more than one value (BatchNorm's constant initial weights and zero biases stay as they are).
    Buffers are copied unchanged: noise on a pretrained BatchNorm's running variance could make
    it negative."""
    out = {}
    for name, tensor in state.items():
        if (name in parameters and tensor.is_floating_point() and tensor.numel() > 1
                and not tensor.is_meta):
            noise = torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype)
            tensor = tensor + PERTURBATION * tensor.std() * noise.to(tensor.device)
        out[name] = tensor
    return out


def _head_states(head: nn.Module, models: list[nn.Module], copies: int
                 ) -> list[dict[str, torch.Tensor]]:
    parameters = [n for n, _ in head.named_parameters()]
    names = parameters + [n for n, _ in head.named_buffers()]
    states = []
    for model in models:
        full = dict(model.named_parameters())
        full.update(dict(model.named_buffers()))
        states.append({name: full[name] for name in names})
    generator = torch.Generator().manual_seed(0)
    while len(states) < copies:
        states.append(_perturbed(states[0], set(parameters), generator))
    return states


def branch(model: nn.Module | Callable[[], nn.Module], *, at: str | None,
           num_branches: int = 3, gate: str | None = "one",
           share_stem: bool = True) -> OwnBranchedNetwork:
    """Turn a classifier into a ONE network: shared trunk, m batched branches, a gate.

    Args:
        model: your network (an ``nn.Module`` whose forward maps a batch to logits (N, C)), or a
            function without arguments that builds it (``lambda: resnet50(num_classes=10)``).
            Given a function, every branch is initialised independently, exactly as the model
            initialises itself (it is called m times; trunk and branch 0 come from the first
            call): the branches ONE distils between start as different as the ensemble's
            members should. Given a module, its weights are copied (so a pretrained head stays
            as it was in branch 0) and branches 1..m-1 are copies perturbed by Gaussian noise of
            :data:`PERTURBATION` times each tensor's standard deviation: identical branches
            would get identical gradients and never diverge. The module is not modified.
        at: the submodule where the branches start, by its name in ``named_modules()`` (e.g.
            "layer4", "features.7", "encoder.layer.10"): everything computed before it is the
            shared trunk; it and everything after it, up to the logits, is copied m times. The
            forward is split there with ``torch.fx``. None with ``share_stem=False``.
        num_branches: m (1: the model itself, with a gate of 1).
        gate: "one": the ONE gate (pooled trunk output -> Linear -> BatchNorm1d -> ReLU ->
            softmax over branches; the mean over tokens for (N, L, C) outputs); None: uniform
            1/m weights.
        share_stem: False shares nothing: m whole copies of the model (``at`` must be None),
            the gate reading the input image.

    Returns:
        An :class:`OwnBranchedNetwork`: ``forward(x)`` gives ``(logits (N, m, C), gate (N,
        m))``; ``net.batched = False`` runs the branches in a loop (same numbers);
        :func:`one_fast.export.extract_branch` gives branch i back as your own class.

    Raises:
        ValueError: ``at`` names no submodule (the top-level children are listed) or one the
            forward does not run once, the model does not trace with torch.fx, more than one
            tensor flows past ``at``, a module's weights are used on both sides of it, the
            forward does not return one logits tensor; or a bad ``num_branches``/``gate``.
    """
    m = check_positive_int("num_branches", num_branches)
    check_bool("share_stem", share_stem)
    if gate not in GATES:
        raise ValueError(f"gate must be 'one' (ONE's gate) or None (uniform), got {gate!r}")
    if not share_stem and at is not None:
        raise ValueError(f"share_stem=False shares nothing, so nothing is split: give at=None "
                         f"(got at={at!r})")
    if isinstance(model, nn.Module):
        models = [copy.deepcopy(model)]
    elif callable(model):
        models = [model() for _ in range(m)]
        bad = [type(built).__name__ for built in models if not isinstance(built, nn.Module)]
        if bad:
            raise ValueError(f"model: the function must build an nn.Module, it returned {bad[0]}")
    else:
        raise ValueError(f"model must be an nn.Module or a function building one, got "
                         f"{type(model).__name__}")
    template = models[0]
    eval_trunk = eval_head = None
    if share_stem:
        parts = split(template, at)
        trunk, head = parts.trunk, parts.head
        width, num_classes = parts.width, parts.num_classes
        eval_trunk, eval_head = parts.eval_trunk, parts.eval_head
    else:
        trunk, head = None, template
        width, num_classes = _first_width(template), None
    if gate == "one" and m > 1 and width is None:
        raise ValueError(f"at={at!r}: the gate's input width cannot be read off the first "
                         f"layer after it (a Conv, Linear or norm layer states it); {SUPPORTED}")
    branches = stack_heads(head, _head_states(head, models, m))
    gate_module = None
    if gate == "one" and m > 1:
        like = next((p for p in template.parameters() if p.is_floating_point()), None)
        gate_module = ONEGate(width, m)
        if like is not None:
            gate_module.to(device=like.device, dtype=like.dtype)
    return OwnBranchedNetwork(
        trunk=trunk, branches=branches, template=template, num_branches=m, gate=gate_module,
        num_classes=num_classes, at=at, eval_trunk=eval_trunk, eval_head=eval_head)
