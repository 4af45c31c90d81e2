"""Cut a user's network in two at a named submodule with ``torch.fx``: trunk and head.

The model is traced once (as torchvision's ``create_feature_extractor`` does) with a tracer that
records, for every graph node, the module whose ``forward`` created it. The first node created
inside the module named ``at`` starts the head; every node before it is the trunk. The value
that flows from the trunk into the head becomes the trunk's output and the head's input, so

    head(trunk(x)) == model(x)

with the model's own submodules, under their own names (``layer4.0.conv1``), in both halves.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx, nn

SUPPORTED = ("what is supported: a model that torch.fx can trace (no Python control flow on "
             "tensor values), whose forward passes one tensor into the module named by `at` "
             "and returns one logits tensor (N, C)")
_SCOPE = "one_fast_scope"


class _ScopeTracer(fx.Tracer):
    """An fx tracer that tags every node with the path of the module being run (``""``: the
    model's own forward)."""

    def __init__(self) -> None:
        super().__init__()
        self.module_scope = ""
        self.calls: dict[str, int] = {}  # module path -> times its forward ran

    def call_module(self, m, forward, args, kwargs):
        outer, self.module_scope = self.module_scope, self.path_of_module(m)
        self.calls[self.module_scope] = self.calls.get(self.module_scope, 0) + 1
        try:
            return super().call_module(m, forward, args, kwargs)
        finally:
            self.module_scope = outer

    def create_node(self, *args, **kwargs):
        node = super().create_node(*args, **kwargs)
        node.meta[_SCOPE] = self.module_scope
        return node


@dataclass
class Split:
    """A model cut at a submodule.

    Attributes:
        trunk: everything computed before ``at``: input -> the tensor entering ``at``.
        head: ``at`` and everything after it: that tensor -> logits.
        width: channels (features) of the tensor entering the head, when the head's first layer
            states it (Conv's in_channels, Linear's in_features, a norm's width), else None.
        num_classes: logits per image when the last layer states it, else None.
    """

    trunk: fx.GraphModule
    head: fx.GraphModule
    width: int | None
    num_classes: int | None


def trace(model: nn.Module) -> tuple[fx.Graph, dict[str, int]]:
    """The model's forward as an fx graph whose nodes say which module created them, and how
    many times each module ran.

    Raises:
        ValueError: the model does not trace, naming the construct fx stopped at.
    """
    tracer = _ScopeTracer()
    try:
        return tracer.trace(model), tracer.calls
    except Exception as err:  # fx raises TraceError, TypeError, NameError, RuntimeError ...
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{type(model).__name__} does not trace with torch.fx "
                         f"({type(err).__name__}: {first}); {SUPPORTED}") from None


def top_level_children(model: nn.Module) -> str:
    """The model's direct children, for error messages."""
    return ", ".join(name for name, _ in model.named_children()) or "none"


def _inside(node: fx.Node, at: str) -> bool:
    scope = node.meta.get(_SCOPE, "")
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
    source = next(n for n in head.graph.nodes if n.op == "placeholder")
    for user in source.users:
        if user.op == "call_module":
            width = _stated(head.get_submodule(user.target), _IN_WIDTH)
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
    graph, calls = trace(model)
    nodes = list(graph.nodes)
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
    output = head_nodes[-1]
    result = output.args[0]
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
    trunk = fx.GraphModule(model, trunk_graph, class_name="Trunk")
    head = fx.GraphModule(model, head_graph, class_name="Head")
    trunk.graph.eliminate_dead_code()  # what only the head needed (nothing, in most models)
    trunk.recompile()
    trunk.delete_all_unused_submodules()

    in_trunk = _tensors(trunk)
    both = sorted({name for key, name in _tensors(head).items() if key in in_trunk})
    if both:
        raise ValueError(f"at={at!r}: {', '.join(both[:4])} {'is' if len(both) == 1 else 'are'} "
                         f"used both before and after the branches start (a module or weight "
                         f"used twice in forward); the branches must own their weights")
    return Split(trunk=trunk, head=head, width=_input_width(head),
                 num_classes=_output_width(head))
