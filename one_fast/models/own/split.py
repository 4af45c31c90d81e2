"""Cut a user's network in two at a named submodule with ``torch.fx``: trunk and head.

The model is traced (as torchvision's ``create_feature_extractor`` does; :mod:`.tracing`)
with a tracer that records, for every graph node, the module whose ``forward`` created it. The
first node created inside the module named ``at`` starts the head; every node before it is the
trunk. The value that flows from the trunk into the head becomes the trunk's output and the
head's input, so

    head(trunk(x)) == model(x)

with the model's own submodules, under their own names (``layer4.0.conv1``), in both halves.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx, nn

from .randomness import draw_per_branch
from .tracing import SCOPE, SUPPORTED, trace


@dataclass
class Split:
    """A model cut at a submodule.

    Attributes:
        trunk: everything computed before ``at``: input -> the tensor entering ``at``.
        head: ``at`` and everything after it: that tensor -> logits.
        width: channels (features) of the tensor entering the head, when the head's first layer
            states it (Conv's in_channels, Linear's in_features, a norm's width), else None.
        num_classes: logits per image when the last layer states it, else None.
        eval_trunk, eval_head: the same cut traced in eval mode, where it differs from train
            mode's (same modules, other code), else None.
    """

    trunk: fx.GraphModule
    head: fx.GraphModule
    width: int | None
    num_classes: int | None
    eval_trunk: fx.GraphModule | None = None
    eval_head: fx.GraphModule | None = None


def top_level_children(model: nn.Module) -> str:
    """The model's direct children, for error messages."""
    return ", ".join(name for name, _ in model.named_children()) or "none"


def _inside(node: fx.Node, at: str) -> bool:
    scope = node.meta.get(SCOPE, "")
    return scope == at or scope.startswith(at + ".")


def _stated(module: nn.Module, attributes: tuple[str, ...]) -> int | None:
    for attribute in attributes:
        value = getattr(module, attribute, None)
        if isinstance(value, (tuple, list, torch.Size)) and value:
            value = value[-1]
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


_IN_WIDTH = ("in_channels", "in_features", "normalized_shape", "num_features", "num_channels")
_OUT_WIDTH = ("out_features", "out_channels")


def _input_width(head: fx.GraphModule) -> int | None:
    """The width entering the head, as its first layer states it: a layer reading the input
    directly, else the first layer the head runs (a ConvNeXt stage's norm runs as functions
    before its convolution, whose in_channels is that width)."""
    source = next(n for n in head.graph.nodes if n.op == "placeholder")
    layers = [n for n in head.graph.nodes if n.op == "call_module"]
    for node in sorted(layers, key=lambda n: source not in n.all_input_nodes):
        width = _stated(head.get_submodule(node.target), _IN_WIDTH)
        if width is not None:
            return width
    return None


def _output_width(head: fx.GraphModule) -> int | None:
    output = next(n for n in head.graph.nodes if n.op == "output")
    node = output.args[0]
    while isinstance(node, fx.Node):
        if node.op == "call_module":
            return _stated(head.get_submodule(node.target), _OUT_WIDTH)
        tensors = [a for a in node.all_input_nodes if a.op != "get_attr"]
        if len(tensors) != 1:  # a binary op etc.: the width is not read off one layer
            return None
        node = tensors[0]
    return None


def _tensors(module: nn.Module) -> dict[int, str]:
    found = {id(t): name for name, t in module.named_parameters(remove_duplicate=False)}
    found.update({id(t): name for name, t in module.named_buffers(remove_duplicate=False)})
    return found


def split(model: nn.Module, at: str) -> Split:
    """Cut ``model`` into trunk and head where the submodule ``at`` starts.

    The model is traced in train mode and in eval mode: Python branches on ``self.training``
    (stochastic depth's ``if not self.training: return x``) are fixed when tracing, so where the
    two differ the eval-mode graphs are kept too (``Split.eval_trunk``, ``Split.eval_head``).

    Raises:
        ValueError: ``at`` names no submodule (the top-level children are listed) or one the
            forward never runs; the model does not trace; more than one value (or the model's
            input) flows past ``at``; ``at`` or a module holding weights runs on both sides;
            the forward does not return one tensor. Each names the problem and what is
            supported.
    """
    if not isinstance(at, str) or not at:
        raise ValueError(f"at must name a submodule (e.g. 'layer4'), got {at!r}; the model's "
                         f"top-level children: {top_level_children(model)}")
    modules = dict(model.named_modules())
    if at not in modules:
        raise ValueError(f"at={at!r} names no submodule of {type(model).__name__}; its "
                         f"top-level children: {top_level_children(model)}")
    was_training = model.training
    try:
        trunk, head = _cut(model.train(), at)
        eval_trunk, eval_head = _cut(model.eval(), at)
    finally:
        model.train(was_training)
    same = trunk.code == eval_trunk.code and head.code == eval_head.code
    return Split(trunk=trunk, head=head, width=_input_width(head),
                 num_classes=_output_width(head), eval_trunk=None if same else eval_trunk,
                 eval_head=None if same else eval_head)


def _cut(model: nn.Module, at: str) -> tuple[fx.GraphModule, fx.GraphModule]:
    """(trunk, head) of the model traced in its current mode; the checks of :func:`split`."""
    traced = trace(model)
    calls, nodes = traced.calls, list(traced.graph.nodes)
    for path, why in traced.opaque.items():
        if at.startswith(path + "."):
            raise ValueError(f"at={at!r} is inside {path}, which torch.fx cannot trace "
                             f"through ({why}); name {path} or a module outside it")
    start = next((k for k, n in enumerate(nodes) if _inside(n, at)), None)
    if start is None:
        raise ValueError(f"at={at!r}: {type(model).__name__}.forward never runs that module; "
                         f"name a module the forward calls")
    trunk_nodes, head_nodes = nodes[:start], nodes[start:]
    runs = max(calls.get(at, 0), sum(1 for k, n in enumerate(nodes) if _inside(n, at) and (
        k == 0 or not _inside(nodes[k - 1], at))))
    if runs > 1:
        raise ValueError(f"at={at!r}: the module is used {runs} times in forward; the branches "
                         f"must start at a module that runs once")
    inside = set(head_nodes)
    crossing = []
    for node in trunk_nodes:
        if node.op != "get_attr" and any(user in inside for user in node.users):
            crossing.append(node)
    if len(crossing) != 1 or crossing[0].op == "placeholder":
        names = ", ".join(f"{n.name} ({'the input' if n.op == 'placeholder' else n.op})"
                          for n in crossing) or "nothing"
        raise ValueError(f"at={at!r}: the branches must start where one tensor flows from "
                         f"the trunk into the rest of the network; {len(crossing)} values do "
                         f"({names}); {SUPPORTED}")
    boundary = crossing[0]
    output = head_nodes.pop()
    result = output.args[0]
    if isinstance(result, dict) and isinstance(result.get("logits"), fx.Node):
        result = result["logits"]  # a ModelOutput (Hugging Face): its logits
    elif isinstance(result, (tuple, list)) and len(result) == 1:
        result = result[0]
    if not isinstance(result, fx.Node):
        raise ValueError(f"{type(model).__name__}.forward returns "
                         f"{type(result).__name__}, not one logits tensor (N, C); {SUPPORTED}")

    trunk_graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in trunk_nodes:
        env[node] = trunk_graph.node_copy(node, lambda n: env[n])
    trunk_graph.output(env[boundary])

    head_graph = fx.Graph()
    env = {boundary: head_graph.placeholder(boundary.name)}
    for node in trunk_nodes:  # attributes read before `at` and used after it
        if node.op == "get_attr" and any(user in inside for user in node.users):
            env[node] = head_graph.node_copy(node)
    for node in head_nodes:
        env[node] = head_graph.node_copy(node, lambda n: env[n])
    head_graph.output(env[result])
    trunk = fx.GraphModule(model, trunk_graph, class_name="Trunk")
    head = fx.GraphModule(model, head_graph, class_name="Head")
    trunk.graph.eliminate_dead_code()  # what only the head needed (nothing, in most models)
    draw_per_branch(head.graph)  # each vmapped branch its own random draws
    head.graph.eliminate_dead_code()  # outputs other than the logits
    for part in (trunk, head):
        part.recompile()
        part.delete_all_unused_submodules()

    in_trunk = _tensors(trunk)
    both = sorted({name for key, name in _tensors(head).items() if key in in_trunk})
    if both:
        raise ValueError(f"at={at!r}: {', '.join(both[:4])} {'is' if len(both) == 1 else 'are'} "
                         f"used both before and after the branches start (a module or weight "
                         f"used twice in forward); the branches must own their weights")
    return trunk, head
