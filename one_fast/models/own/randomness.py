"""Make a head's in-place random fills out-of-place, so each vmapped branch draws its own.

torchvision's stochastic depth draws its mask as ``torch.empty(size).bernoulli_(p)``: an in-place
fill of a tensor the head creates, which is the same for every branch under ``vmap`` -- and
``vmap(randomness="different")`` refuses it ("Cannot ask for different inplace randomness on an
unbatched tensor"). The same draw written out-of-place (``torch.bernoulli(torch.full_like(t,
p))``) gives every branch its own mask. Only fills whose tensor nothing else reads are
rewritten (the fill's result is what the code goes on with), so the rewrite computes the same
distribution.
"""

from __future__ import annotations

import operator

import torch
from torch import fx


def _argument(node: fx.Node, index: int, name: str, default: float):
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _out_of_place(graph: fx.Graph, node: fx.Node) -> fx.Node | None:
    """The out-of-place equivalent of the in-place random fill ``node``, or None."""
    tensor = node.args[0]
    if node.target == "bernoulli_":
        p = _argument(node, 1, "p", 0.5)
        if isinstance(p, fx.Node):  # a tensor of probabilities: left as it is
            return None
        return graph.call_function(torch.bernoulli,
                                   (graph.call_function(torch.full_like, (tensor, p)),))
    if node.target == "uniform_":
        low, high = _argument(node, 1, "from", 0.0), _argument(node, 2, "to", 1.0)
        draw = graph.call_function(torch.rand_like, (tensor,))
        scaled = graph.call_function(operator.mul, (draw, graph.call_function(
            operator.sub, (high, low))))
        return graph.call_function(operator.add, (scaled, low))
    if node.target == "normal_":
        mean, std = _argument(node, 1, "mean", 0.0), _argument(node, 2, "std", 1.0)
        draw = graph.call_function(torch.randn_like, (tensor,))
        return graph.call_function(operator.add, (graph.call_function(
            operator.mul, (draw, std)), mean))
    return None


# torchvision wraps its stochastic depth for fx (one opaque call), so its in-place mask cannot be
# rewritten inside the graph: the call is replaced by the same function drawn out-of-place.
TORCHVISION_STOCHASTIC_DEPTH = "torchvision.ops.stochastic_depth.stochastic_depth"


def stochastic_depth(input: torch.Tensor, p: float, mode: str,
                     training: bool = True) -> torch.Tensor:
    """torchvision.ops.stochastic_depth with its mask drawn out-of-place (same distribution)."""
    if p < 0.0 or p > 1.0:
        raise ValueError(f"drop probability has to be between 0 and 1, but got {p}")
    if mode not in ("batch", "row"):
        raise ValueError(f"mode has to be either 'batch' or 'row', but got {mode}")
    if not training or p == 0.0:
        return input
    survival_rate = 1.0 - p
    size = [input.shape[0]] + [1] * (input.ndim - 1) if mode == "row" else [1] * input.ndim
    noise = torch.bernoulli(torch.full(size, survival_rate, dtype=input.dtype,
                                       device=input.device))
    if survival_rate > 0.0:
        noise = noise / survival_rate
    return input * noise


def _name(target: object) -> str:
    return f"{getattr(target, '__module__', '')}.{getattr(target, '__qualname__', '')}"


def draw_per_branch(graph: fx.Graph) -> int:
    """Rewrite the graph's in-place random fills (bernoulli_, uniform_, normal_) of tensors
    read by nothing else as out-of-place draws, and torchvision's stochastic depth as
    :func:`stochastic_depth`; returns how many were rewritten."""
    rewritten = 0
    for node in list(graph.nodes):
        if node.op == "call_function" and _name(node.target) == TORCHVISION_STOCHASTIC_DEPTH:
            node.target = stochastic_depth
            rewritten += 1
            continue
        if (node.op != "call_method" or node.target not in ("bernoulli_", "uniform_", "normal_")
                or not isinstance(node.args[0], fx.Node) or len(node.args[0].users) != 1):
            continue
        with graph.inserting_before(node):
            replacement = _out_of_place(graph, node)
        if replacement is None:
            continue
        node.replace_all_uses_with(replacement)
        graph.erase_node(node)
        rewritten += 1
    return rewritten
