"""Take a trained multi-branch network apart: one member as a plain network, or the ensemble.

A ONE network trains m branches on a shared trunk; at test time one branch is the deployable
student and the gated sum of the branch logits (ONE-E) the more accurate ensemble. dml and
ensemble runs train m fully independent members, whose ensemble averages their softmax
probabilities. This module turns either into an ordinary ``nn.Module`` mapping images
(N, 3, H, W) to one (N, C) tensor, ready for ``torch.export``, ONNX or TorchScript.

Both modules keep the parameter names of the network they run: their ``state_dict`` is that
network's ``state_dict`` (see :class:`PlainNetwork`).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..methods import Method, create_method
from ..models import BranchedNetwork, OwnBranchedNetwork, create_model


class PlainNetwork(nn.Module):
    """A single-output view of a :class:`BranchedNetwork`: ``forward(x)`` -> (N, C).

    The view owns the network's modules under their own names (``stem``, ``trunk``,
    ``branches``, ``classifier``, the gate's), so its ``state_dict`` loads strictly into the
    network it wraps and vice versa, and torch.export / ONNX see the same parameter names.

    Args:
        network: the network run (put in eval mode, batched).
        output: ``"member"`` (m = 1 network: its only branch's logits), or ``"ensemble"``
            (m > 1: ``method.ensemble_logits`` of the network's outputs).
        method: for ``"ensemble"``: the method that defines the ensemble.
    """

    def __init__(self, network: BranchedNetwork, output: str,
                 method: Method | None = None) -> None:
        super().__init__()
        if output not in ("member", "ensemble"):
            raise ValueError(f"output must be 'member' or 'ensemble', got {output!r}")
        if output == "member" and network.num_branches != 1:
            raise ValueError(f"a member view needs the m = 1 network, got m = "
                             f"{network.num_branches}")
        if output == "ensemble" and method is None:
            raise ValueError("an ensemble view needs the method that defines the ensemble")
        for name, child in network.named_children():
            self.add_module(name, child)
        # The network itself is held outside the module tree: registering it would prefix
        # every state_dict key with its attribute name. Its modules are the ones above.
        self.__dict__["network"] = network
        self.output = output
        self.method = method
        network.batched = True
        self.eval()

    def train(self, mode: bool = True) -> PlainNetwork:
        """Set train/eval mode; the wrapped network's own flag follows (its modules are ours)."""
        super().train(mode)
        self.network.training = mode
        return self

    @property
    def num_classes(self) -> int:
        """C, the number of logits per image."""
        return self.network.num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = self.network(x)
        if self.output == "member":
            return outputs[0][:, 0]
        return self.method.ensemble_logits(outputs)


def plain_network(model: BranchedNetwork) -> BranchedNetwork:
    """A fresh m = 1 network of ``model``'s architecture and options (random weights).

    For a network from :func:`one_fast.models.create_model` it is ``create_model(model.arch,
    num_classes=model.num_classes, num_branches=1, **model.arch_options)``; for one built
    directly from an arch class (``ONEResNet(depth=20, ...)``), the same class with the same
    arguments and ``num_branches=1`` -- the plain network, no gate, no branches batched together.

    Raises:
        ValueError: ``model`` is not a network this package builds.
    """
    if not isinstance(model, BranchedNetwork):
        raise ValueError(f"the model must be a network built by one_fast (create_model, an arch "
                         f"class such as ONEResNet, or one_fast.models.branch); got "
                         f"{type(model).__name__}")
    arch = getattr(model, "arch", None)
    options = getattr(model, "arch_options", None)
    if arch is None or options is None:
        return model.with_branches(1)
    plain = create_model(arch, num_classes=model.num_classes, num_branches=1, **options)
    plain.arch, plain.arch_options = arch, dict(options)
    return plain


def extract_branch(model: BranchedNetwork | OwnBranchedNetwork, i: int) -> nn.Module:
    """Branch (member) ``i`` of ``model`` as a plain single-branch network.

    The result runs the shared trunk (when there is one), branch i's stack and its classifier;
    no gate, no other branch, no convolution grouped across branches.

    For a network of :func:`one_fast.models.branch` (your own model made a ONE network) the
    result is an instance of *your* class: a copy of your model holding the trunk's and branch
    i's weights, whose ``state_dict`` loads strictly into a fresh instance of that class.
    For the package's own networks it is a :class:`PlainNetwork` whose parameters are exactly
    those of the m = 1 network of the same architecture: ``result.state_dict()`` loads strictly
    into ``create_model(model.arch, num_classes=C, num_branches=1, **model.arch_options)``
    (that network is ``result.network``).

    Args:
        model: a multi-branch network built by one_fast (``create_model``, an arch class such
            as ``ONEResNet``, or ``branch``; any method: a ONE branch, or a dml/ensemble
            member).
        i: branch index, 0 .. m - 1.

    Returns:
        A module in eval mode (a copy; ``model`` is untouched) whose ``forward(x)`` gives
        logits (N, C) equal to ``model(x)[0][:, i]`` in eval mode (to float32 rounding).

    Raises:
        ValueError: ``i`` out of range, or a model this package did not build.
    """
    if isinstance(model, OwnBranchedNetwork):
        student = model.extract(i)
        if hasattr(model, "arch"):  # built by the trainer: what export records in its file
            student.one_fast_built_from = (model.arch, dict(model.arch_options), 1)
        return student
    if not isinstance(model, BranchedNetwork):
        plain_network(model)  # raises, naming what is accepted
    state = model.branch_state_dict(i)  # validates i
    reference = next(model.parameters())
    plain = plain_network(model).to(device=reference.device, dtype=reference.dtype)
    plain.load_state_dict(state, strict=True)
    return PlainNetwork(plain, "member")


def built_from(module: nn.Module) -> tuple[str, dict, int]:
    """(arch, arch options, number of branches) of an extracted member or ensemble: how to
    build its network again (``create_model``, or ``create_own_model`` for ``module:`` archs).

    Raises:
        ValueError: a module whose network does not record how it was built.
    """
    if isinstance(module, PlainNetwork):
        network = module.network
        if hasattr(network, "arch") and hasattr(network, "arch_options"):
            return network.arch, dict(network.arch_options), network.num_branches
    elif hasattr(module, "one_fast_built_from"):
        arch, options, m = module.one_fast_built_from
        return arch, dict(options), m
    raise ValueError(f"{type(module).__name__} does not record how its network was built "
                     f"(networks from create_model or the trainer do)")


def extract_ensemble(model: BranchedNetwork | OwnBranchedNetwork,
                     method: str | Method = "one") -> PlainNetwork:
    """The whole network as one module returning its ensemble's (N, C) output.

    Args:
        model: a multi-branch network built by one_fast (m >= 2; ``create_model``, an arch
            class such as ``ONEResNet``, or ``branch``).
        method: the method the network was trained with, by name or as a
            :class:`~one_fast.methods.Method`. ``"one"``: ONE-E, the gated logits
            ``sum_i g_i z_i``. ``"dml"`` / ``"ensemble"``: the averaged-probability ensemble;
            the module returns the *log* of the members' mean softmax probabilities (its
            argmax is the ensemble's prediction, its softmax the averaged probabilities).

    Returns:
        A :class:`PlainNetwork` in eval mode holding a copy of ``model`` (its ``state_dict``
        loads strictly into ``model``).

    Raises:
        ValueError: m < 2, a method without an ensemble (baseline, kd), or a model this
            package did not build.
    """
    if isinstance(method, str):
        method = create_method(method)
    if not method.has_ensemble:
        raise ValueError(f"method {method.name!r} has no ensemble; extract a member instead")
    if not isinstance(model, (BranchedNetwork, OwnBranchedNetwork)):
        plain_network(model)  # raises, naming what is accepted
    if model.num_branches < 2:
        raise ValueError(f"an ensemble needs m >= 2 branches, the model has "
                         f"{model.num_branches}")
    ensemble = PlainNetwork(copy.deepcopy(model), "ensemble", method)
    if isinstance(model, OwnBranchedNetwork):
        # Through vmap torch.export (torch 2.13) fixes the batch size; the loop computes the
        # same numbers and exports with a dynamic batch.
        ensemble.network.batched = False
    return ensemble
