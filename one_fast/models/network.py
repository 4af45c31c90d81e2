"""The ONE network skeleton every architecture shares: stem, shared trunk, m batched branch
stacks, classifiers, gate.

An architecture is described by a stem builder and a list of stage builders; this module decides
which stages are shared (the trunk) and which are replicated per branch, runs the branches
batched or one by one, and knows which tensor belongs to which branch.

Branch-slicing convention (what export and the independence checks rely on): every tensor of a
branch-owned module (``tensor_owner(name) == "branches"``) that has a leading dimension stores
the m branches' copies as m equal chunks along dim 0, branch i's chunk being exactly that tensor
in the m = 1 network of the same architecture (a ``(m*C_out, C_in/g, k, k)`` conv weight, an
``(m*C,)`` BatchNorm vector, an ``(m, K, C)`` classifier weight). Scalar counters
(``num_batches_tracked``) are shared by the branches of a module.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import BranchedModule
from .branched import BranchedBatchNorm2d, BranchedLinear

IMAGE_CHANNELS = 3

StemBuilder = Callable[[int], tuple[BranchedModule, int]]
"""m -> (stem module for m branches, its output channels)."""
StageBuilder = Callable[[int, int, bool], tuple[list[nn.Module], int]]
"""(m, in_channels, shared_input) -> (the stage's modules, output channels); only the first
module of a stage may take the shared input."""
HeadBuilder = Callable[[int, int], list[nn.Module]]
"""(m, channels) -> modules run on the last stage's output before pooling (e.g. BN -> ReLU)."""


def check_positive_int(name: str, value: object, minimum: int = 1) -> int:
    """``value`` if it is an int >= minimum (not a bool); ValueError naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        wanted = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ValueError(f"{name} must be {wanted}, got {value!r}")
    return value


def check_bool(name: str, value: object) -> bool:
    """``value`` if it is a bool; ValueError naming ``name`` otherwise."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def check_fixed_sharing(network: str, fixed: Mapping[str, object], **given: object) -> None:
    """Refuse sharing settings other than the ones a branch layout fixes.

    Args:
        network: what the layout is, for the message (e.g. "the CL-ILR tree shares the stem and
            stage 1 and has no gate").
        fixed: the layout's settings, e.g. ``{"shared_stages": 1, "gate": False, ...}``.
        given: the settings the caller passed, by the same names.

    Raises:
        ValueError: a given setting differs from the fixed one (the message names all).
    """
    if all(type(given[name]) is type(value) and given[name] == value  # True is not 1 here
           for name, value in fixed.items()):
        return
    wanted = ", ".join(f"{name}={value!r}" for name, value in fixed.items())
    got = ", ".join(f"{name}={given[name]!r}" for name in fixed)
    raise ValueError(f"{network}: it needs {wanted}, got {got}")


class BranchedNetwork(nn.Module):
    """A ONE network: shared stem and trunk, m branch stacks run as one, a gate.

    The stem and the first ``shared_stages`` stages form the trunk; the remaining stages, the
    head and global average pooling + classifier are replicated per branch. The gate
    (global average pool -> Linear(C, m) -> BatchNorm1d(m) -> ReLU -> softmax, as in the ONE
    authors' code) reads the trunk output and weights the branch logits into the ensemble
    teacher. With ``share_stem=False`` nothing is shared: the stem is per branch too, the
    branches are m independent networks, and the gate (if any) reads the image itself.

    ``batched=True`` runs every branch layer as one kernel for all m branches;
    ``model.batched = False`` (settable at any time) runs the same parameters branch by branch
    (the reference path). Both leave the same state (BatchNorm running statistics included).

    Args:
        stem: builds the stem for a given number of branches.
        stages: the stage builders, in order.
        head: builds what follows the last stage before pooling, or None.
        num_classes: classifier outputs per branch.
        num_branches: m; 1 gives the plain network.
        shared_stages: stages in the trunk, 0 .. len(stages) - 1.
        share_stem: False gives m fully independent networks (needs ``shared_stages=0``).
        gate: learn the gate; False gives uniform 1/m weights.
        batched: run branches batched (True) or one after another (False).

    Returns (from ``forward(x)``, x of shape (N, 3, H, W)):
        ``(logits, gate)``: logits (N, m, num_classes); gate (N, m), rows summing to 1.
    """

    def __init_subclass__(cls, **kwargs) -> None:
        """Every subclass records the arguments it was built with (:meth:`with_branches`)."""
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None:
            return

        @functools.wraps(init)
        def recording_init(self, *args, **options) -> None:
            init(self, *args, **options)
            # The outermost constructor finishes last: its arguments are the ones kept.
            self.built_with = (type(self), args, options)

        cls.__init__ = recording_init

    def with_branches(self, num_branches: int) -> BranchedNetwork:
        """A fresh network of this class and options with ``num_branches`` branches.

        Works for every subclass (ONEResNet, ONEWideResNet ... built directly or by
        ``create_model``): each records the arguments it was built with.

        Raises:
            ValueError: a BranchedNetwork built directly (it has no arguments to repeat).
        """
        if not hasattr(self, "built_with"):
            raise ValueError("this network was built as a bare BranchedNetwork; build it with "
                             "create_model or an arch class (ONEResNet ...) to rebuild it")
        cls, args, options = self.built_with
        bound = inspect.signature(cls).bind(*args, **options)
        bound.arguments["num_branches"] = num_branches
        return cls(*bound.args, **bound.kwargs)

    def __init__(self, *, stem: StemBuilder, stages: Sequence[StageBuilder],
                 head: HeadBuilder | None, num_classes: int, num_branches: int,
                 shared_stages: int, share_stem: bool, gate: bool, batched: bool) -> None:
        super().__init__()
        check_positive_int("num_classes", num_classes)
        m = check_positive_int("num_branches", num_branches)
        check_bool("share_stem", share_stem)
        check_bool("gate", gate)
        if (isinstance(shared_stages, bool) or not isinstance(shared_stages, int)
                or not 0 <= shared_stages < len(stages)):
            allowed = ", ".join(str(k) for k in range(len(stages) - 1))
            raise ValueError(f"shared_stages must be {allowed} or {len(stages) - 1}, "
                             f"got {shared_stages!r}")
        if not share_stem and shared_stages:
            raise ValueError("share_stem=False needs shared_stages=0: a per-branch stem cannot "
                             f"feed a shared stage (got shared_stages={shared_stages})")
        self.num_branches = m
        self.num_classes = num_classes
        self.shared_stages = shared_stages
        self.share_stem = share_stem
        self.batched = batched

        self.stem, channels = stem(1 if share_stem else m)
        self.trunk_channels = channels if share_stem else IMAGE_CHANNELS
        trunk: list[nn.Module] = []
        branch: list[nn.Module] = []
        for index, build in enumerate(stages):
            shared = index < shared_stages
            first_branched = not shared and not branch and share_stem
            modules, channels = build(1 if shared else m, channels, first_branched)
            (trunk if shared else branch).extend(modules)
            if shared:
                self.trunk_channels = channels
        if head is not None:
            branch.extend(head(m, channels))
        self.trunk = nn.Sequential(*trunk)
        self.branches = nn.ModuleList(branch)
        self.classifier = BranchedLinear(m, channels, num_classes)

        self.gate_fc: nn.Linear | None = None
        self.gate_bn: nn.BatchNorm1d | None = None
        if gate and m > 1:
            self.gate_fc = nn.Linear(self.trunk_channels, m)
            self.gate_bn = nn.BatchNorm1d(m)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shared = self.trunk(self.stem(x)) if self.share_stem else x
        gate = self._gate(shared)
        return self.classify(self.pooled_features(shared)), gate

    def pooled_features(self, shared: torch.Tensor) -> torch.Tensor:
        """Every branch's globally pooled last-stage features (N, m, D) from the trunk output
        (the image when nothing is shared), batched or branch by branch as ``self.batched``.

        The per-branch path counts each BatchNorm's ``num_batches_tracked`` once, as one
        batched forward does.
        """
        if self.batched:
            out = shared
            for layer in self._branch_layers():
                out = layer(out)
            return out.mean((2, 3)).reshape(out.shape[0], self.num_branches, -1)
        features = torch.stack([self.branch_features(shared, i)
                                for i in range(self.num_branches)], 1)
        for layer in self._branch_layers():
            for module in layer.modules():
                if isinstance(module, BranchedBatchNorm2d):
                    module.count_batch()
        return features

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """The m classifiers on pooled features (N, m, D): logits (N, m, K)."""
        if self.batched:
            return self.classifier(features.reshape(features.shape[0], -1))
        return torch.stack([self.classifier.forward_branch(features[:, i], i)
                            for i in range(self.num_branches)], 1)

    def forward_branch(self, shared: torch.Tensor, i: int) -> torch.Tensor:
        """Branch i's logits (N, K) from the trunk output (the image when nothing is shared).

        Runs branch i's slice of every parameter; BatchNorm ``num_batches_tracked`` is not
        counted here (``forward`` counts it once per step for all branches).
        """
        return self.classifier.forward_branch(self.branch_features(shared, i), i)

    def branch_features(self, shared: torch.Tensor, i: int) -> torch.Tensor:
        """Branch i's pooled last-stage features (N, D), run on its slice of the parameters."""
        out = shared
        for layer in self._branch_layers():
            out = layer.forward_branch(out, i)
        return out.mean((2, 3))

    def _branch_layers(self) -> list[nn.Module]:
        return list(self.branches) if self.share_stem else [self.stem, *self.branches]

    def _gate(self, shared: torch.Tensor) -> torch.Tensor:
        n, m = shared.shape[0], self.num_branches
        if self.gate_fc is None:
            return shared.new_full((n, m), 1.0 / m)
        g = F.relu(self.gate_bn(self.gate_fc(shared.mean((2, 3)))))
        return F.softmax(g, dim=1)

    def tensor_owner(self, name: str) -> str:
        """Who owns the parameter or buffer ``name`` (a ``state_dict`` key).

        Returns:
            "trunk" (shared by every branch), "gate", or "branches" (m chunks along dim 0, see
            the module docstring; scalars are shared counters).
        """
        root = name.split(".", 1)[0]
        if root in ("gate_fc", "gate_bn"):
            return "gate"
        if root in ("branches", "classifier") or (root == "stem" and not self.share_stem):
            return "branches"
        if root in ("stem", "trunk"):
            return "trunk"
        raise KeyError(f"{name!r} is not a tensor of this network")

    def branch_state_dict(self, i: int) -> dict[str, torch.Tensor]:
        """Branch i as the ``state_dict`` of the m = 1 network of the same architecture.

        Trunk tensors are copied, each branch-owned tensor is cut to branch i's chunk, the gate
        is dropped: the result loads strictly into that plain network (``num_branches=1``, same
        other options), whose output then equals ``self(x)[0][:, i]`` in eval mode.
        """
        m = self.num_branches
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < m:
            raise ValueError(f"branch index must be in 0..{m - 1}, got {i!r}")
        state = {}
        for name, tensor in self.state_dict().items():
            owner = self.tensor_owner(name)
            if owner == "gate":
                continue
            copies, index = self.branch_chunk(owner, i)
            if copies > 1 and tensor.dim() > 0:
                size = tensor.shape[0] // copies
                tensor = tensor.narrow(0, index * size, size)
            state[name] = tensor.detach().clone()
        return state

    def branch_chunk(self, owner: str, i: int) -> tuple[int, int]:
        """(copies, index): a tensor of ``owner`` stores that many copies along dim 0 and branch
        i reads copy ``index`` ("branches": m copies, the i-th; shared parts: one copy)."""
        return (self.num_branches, i) if owner == "branches" else (1, 0)
