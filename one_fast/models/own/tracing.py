"""Trace a user's forward with ``torch.fx``, each node tagged with the module that created it.

Only the model's own forward must trace: a submodule fx cannot trace through runs as one call.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

from torch import fx, nn

SUPPORTED = ("what is supported: a model whose forward torch.fx can trace (no Python control "
             "flow on tensor values there; submodules fx cannot trace run whole), that passes "
             "one tensor into the module named by `at` and returns one logits tensor (N, C) "
             "(or a mapping holding it under 'logits')")
SCOPE = "one_fast_scope"  # node.meta key: the path of the module that created the node


class _ScopeTracer(fx.Tracer):
    """An fx tracer that tags every node with the path of the module being run (``""``: the
    model's own forward), counts each module's calls, treats the modules in ``leaves`` as
    single calls, and remembers the innermost module whose tracing failed."""

    def __init__(self, leaves: frozenset[str]) -> None:
        super().__init__()
        self.leaves = leaves
        self.module_scope = ""
        self.calls: dict[str, int] = {}  # module path -> times its forward ran
        self.failed_in: str | None = None

    def create_args_for_root(self, root_fn, is_module, concrete_args=None):
        # The model is traced as called with its input alone: its other arguments keep their
        # defaults (Hugging Face's labels=None, return_dict=None, **kwargs), and a decorated
        # forward (@can_return_tuple, which only reshapes what is returned) runs undecorated.
        forward = inspect.unwrap(root_fn)

        def called_with_input(self, x):
            return forward(self, x)

        return super().create_args_for_root(called_with_input, is_module, concrete_args)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return module_qualified_name in self.leaves or super().is_leaf_module(
            m, module_qualified_name)

    def call_module(self, m, forward, args, kwargs):
        outer, self.module_scope = self.module_scope, self.path_of_module(m)
        self.calls[self.module_scope] = self.calls.get(self.module_scope, 0) + 1
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:
                self.failed_in = self.module_scope
            raise
        finally:
            self.module_scope = outer

    def create_node(self, *args, **kwargs):
        node = super().create_node(*args, **kwargs)
        node.meta[SCOPE] = self.module_scope
        return node


@dataclass
class Traced:
    """A traced forward: the graph, each module's number of calls, and the submodules run as
    single calls because fx cannot trace inside them (path -> why)."""

    graph: fx.Graph
    calls: dict[str, int]
    opaque: dict[str, str]


# Submodules that may be run whole before tracing gives up (each costs one more trace).
MAX_OPAQUE = 16


def _reason(err: Exception) -> str:
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


def trace(model: nn.Module) -> Traced:
    """The model's forward as an fx graph whose nodes say which module created them.

    A submodule whose own forward does not trace (a shape check such as Hugging Face's
    ``if num_channels != self.num_channels``) is run as one call instead and the model traced
    again, innermost first; only the model's own forward must trace.

    Raises:
        ValueError: the model's own forward (or too many submodules) does not trace, naming the
            construct fx stopped at.
    """
    opaque: dict[str, str] = {}
    while True:
        tracer = _ScopeTracer(frozenset(opaque))
        try:
            return Traced(tracer.trace(model), tracer.calls, opaque)
        except Exception as err:  # fx raises TraceError, TypeError, NameError, RuntimeError ...
            where = tracer.failed_in
            if not where or where in opaque or len(opaque) >= MAX_OPAQUE:
                place = (f"in {type(model).__name__}.forward itself" if not where else
                         f"in {where} ({type(model.get_submodule(where)).__name__}.forward)")
                raise ValueError(f"{type(model).__name__} does not trace with torch.fx "
                                 f"({_reason(err)}, {place}); {SUPPORTED}") from None
            opaque[where] = _reason(err)
