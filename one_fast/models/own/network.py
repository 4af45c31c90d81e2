"""A user's network as a ONE network: its trunk shared, its head stacked m times, a gate.

The m heads are one module (``branches``) whose every parameter and buffer holds the m copies
stacked along a new leading dimension: ``branches.layer4.0.conv1.weight`` is (m, 512, 1024, 1,
1). The forward runs them as one batched computation, ``torch.func.vmap`` over
``torch.func.functional_call`` (branch i sees slice i of every tensor; BatchNorm updates its
slice of the running statistics in place), or, with ``batched = False``, one branch after
another through the same slices (the reference path: same outputs, gradients and BatchNorm
state).
"""

from __future__ import annotations

import copy

import torch
from torch import fx, nn
from torch.func import functional_call, vmap

from .gate import ONEGate


def _replace(root: nn.Module, stacked: dict[int, torch.Tensor]) -> None:
    """Swap every parameter/buffer of ``root`` (shared ones everywhere) for ``stacked[id]``."""
    for module in root.modules():
        for store in (module._parameters, module._buffers):
            for name, tensor in store.items():
                if tensor is not None and id(tensor) in stacked:
                    store[name] = stacked[id(tensor)]


def stack_heads(head: nn.Module, states: list[dict[str, torch.Tensor]]) -> nn.Module:
    """A copy of ``head`` whose tensors are the m heads' tensors stacked on dim 0.

    Args:
        head: the head module (its tensors' names are the keys of ``states``).
        states: one ``{name: tensor}`` per branch, for every parameter and buffer of ``head``.
    """
    stacked_head = copy.deepcopy(head)
    stacked: dict[int, torch.Tensor] = {}
    for name, tensor in stacked_head.named_parameters():
        values = torch.stack([state[name].detach() for state in states]).to(tensor.device)
        stacked[id(tensor)] = nn.Parameter(values, requires_grad=tensor.requires_grad)
    for name, tensor in stacked_head.named_buffers():
        stacked[id(tensor)] = torch.stack([state[name] for state in states]).to(tensor.device)
    _replace(stacked_head, stacked)
    return stacked_head


class OwnBranchedNetwork(nn.Module):
    """A user's classifier turned into a ONE network (built by :func:`one_fast.models.branch`).

    ``forward(x)`` returns ``(logits (N, m, C), gate (N, m))`` like every network of
    :func:`one_fast.models.create_model`, so ONELoss, the methods, the trainer, evaluation and
    export take it. ``state_dict`` keys: ``trunk.<the model's own names>``, ``branches.<the
    model's own names>`` (each tensor m stacked copies), ``gate.fc.*``, ``gate.bn.*``.

    Attributes:
        batched: True runs the m branches as one vmapped computation; False one after another
            (the same numbers; for debugging). Settable at any time.
        num_branches: m.
        num_classes: logits per image (None when the model's last layer does not state it).
        at: the submodule where the branches start (None: nothing shared).
    """

    def __init__(self, *, trunk: nn.Module | None, branches: nn.Module, template: nn.Module,
                 num_branches: int, gate: ONEGate | None, num_classes: int | None,
                 at: str | None, eval_trunk: fx.GraphModule | None = None,
                 eval_head: fx.GraphModule | None = None) -> None:
        super().__init__()
        self.trunk = trunk
        self.branches = branches
        self.gate = gate
        self.num_branches = num_branches
        self.num_classes = num_classes
        self.at = at
        self.batched = True
        # The user's model, outside the module tree (its state would be saved twice): the
        # class and the layers the forward does not run, for extract_branch. Its trunk
        # modules are this network's trunk modules.
        self.__dict__["template"] = template
        # The eval-mode code where tracing fixed a `self.training` branch differently (None:
        # the same code). It runs the modules above (the trunk's, and the stacked heads'
        # under the same names), so it is kept outside the module tree too.
        eval_branches = None if eval_head is None else fx.GraphModule(branches, eval_head.graph)
        self.__dict__["eval_parts"] = (None if eval_trunk is None and eval_head is None else
                                       (eval_trunk or trunk, eval_branches or branches))

    @property
    def share_stem(self) -> bool:
        """Whether anything is shared (False: m whole copies of the model)."""
        return self.trunk is not None

    def _parts(self) -> tuple[nn.Module | None, nn.Module]:
        """(trunk, heads) to run in the current mode."""
        if self.training or self.eval_parts is None:
            return self.trunk, self.branches
        return self.eval_parts

    def branch_tensors(self) -> dict[str, torch.Tensor]:
        """Every stacked (m, ...) parameter and buffer of the branches, by name."""
        return {**dict(self.branches.named_parameters()), **dict(self.branches.named_buffers())}

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        trunk, heads = self._parts()
        shared = trunk(x) if trunk is not None else x
        n, m = x.shape[0], self.num_branches
        gate = self.gate(shared) if self.gate is not None else x.new_full((n, m), 1.0 / m)
        tensors = self.branch_tensors()
        def run(head_tensors: dict[str, torch.Tensor], features: torch.Tensor) -> torch.Tensor:
            return functional_call(heads, head_tensors, (features,))

        if self.batched:
            logits = vmap(run, in_dims=(0, None), randomness="different")(tensors, shared)
        else:
            logits = torch.stack([run({k: t[i] for k, t in tensors.items()}, shared)
                                  for i in range(m)])
        if not isinstance(logits, torch.Tensor) or logits.dim() != 3 or logits.shape[1] != n:
            shape = tuple(logits.shape[1:]) if isinstance(logits, torch.Tensor) else type(
                logits).__name__
            raise ValueError(f"the model must return logits (N, C) for N = {n} images; its "
                             f"head returned {shape}")
        return logits.transpose(0, 1), gate

    def branch_state_dict(self, i: int) -> dict[str, torch.Tensor]:
        """Branch i as a ``state_dict`` of the user's own model (trunk + branch i's head).

        Holds every tensor the forward uses, under the model's own names; the model's layers
        that the forward never runs are not in it.
        """
        m = self.num_branches
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < m:
            raise ValueError(f"branch index must be in 0..{m - 1}, got {i!r}")
        state = {}
        if self.trunk is not None:
            state.update({k: t.detach().clone() for k, t in self.trunk.state_dict().items()})
        for name, tensor in self.branches.state_dict().items():
            state[name] = tensor[i].detach().clone()
        return state

    def extract(self, i: int) -> nn.Module:
        """Branch i as an instance of the user's own class (a copy, eval mode).

        Its ``state_dict`` loads strictly into a fresh instance of that class, and its output
        equals ``self(x)[0][:, i]`` in eval mode.
        """
        state = self.branch_state_dict(i)
        student = copy.deepcopy(self.template)
        unexpected = student.load_state_dict(state, strict=False).unexpected_keys
        if unexpected:  # cannot happen for a network built by branch(); guards edits
            raise ValueError(f"tensors not in {type(student).__name__}: {unexpected}")
        reference = next(iter(self.parameters()))
        return student.to(device=reference.device, dtype=reference.dtype).eval()
