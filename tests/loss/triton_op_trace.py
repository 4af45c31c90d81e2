"""Run by tests/loss/test_triton_op.py in a subprocess without TRITON_INTERPRET: the compiled
(not interpreted) Triton op traced by ``torch.compile(fullgraph=True)`` on CPU tensors, with a
stand-in driver for sm_90 (nothing is launched; the compiler backend records the graphs and
stops). Prints one JSON object with what the test checks."""

from __future__ import annotations

import json
import os
import sys

os.environ.pop("TRITON_INTERPRET", None)  # before triton.jit defines the kernel

import torch  # noqa: E402
import triton  # noqa: E402
from torch._dynamo.backends.common import aot_autograd  # noqa: E402
from torch._dynamo.utils import counters  # noqa: E402
from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table  # noqa: E402

from benchmarks.triton_compile_check import stand_in_driver  # noqa: E402
from one_fast.loss import fused_op, triton_kernel  # noqa: E402


class Traced(Exception):
    """Raised instead of running the compiled graph (there is no GPU to launch on)."""


def main() -> dict[str, object]:
    # The functionalisation pass reads the kernel's Triton IR to learn which arguments it
    # writes; that needs an active driver to name a target.
    triton.runtime.driver.set_active(stand_in_driver(90))
    graphs: list[torch.fx.GraphModule] = []

    def record(gm, example_inputs):
        graphs.append(gm)

        def stop(*args):
            raise Traced

        return stop

    def loss(z, g, y, w):
        terms = triton_kernel.op(z, g, y, w.reshape(1).double(), 3.0, False, -100, True)
        return terms[0].mean() + terms[3].sum()

    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(loss, backend=aot_autograd(fw_compiler=record, bw_compiler=record),
                             fullgraph=True)
    z = torch.randn(9, 3, 40, requires_grad=True)
    g = torch.softmax(torch.randn(9, 3), dim=1).requires_grad_()
    y = torch.randint(0, 40, (9,))
    try:
        compiled(z, g, y, torch.tensor(0.5))
    except Traced:
        pass
    forward = graphs[0].graph
    launches = [n for n in forward.nodes if n.op == "call_function"
                and n.target is torch.ops.higher_order.triton_kernel_wrapper_functional]
    kernels = [kernel_side_table.get_kernel(n.kwargs["kernel_idx"]) for n in launches]
    opaque = [str(n.target) for n in forward.nodes if "triton_one_loss" in str(n.target)]

    # The fake implementation (the traced launcher) allocates what the shared contract says.
    from torch._subclasses.fake_tensor import FakeTensorMode

    fake_ok = []
    with FakeTensorMode():
        for dtype, grad in ((torch.float32, True), (torch.bfloat16, False),
                            (torch.float64, True)):
            zf = torch.empty(5, 4, 300, dtype=dtype)
            gf = torch.empty(5, 4, dtype=torch.float64 if dtype == torch.float64 else
                             torch.float32)
            got = torch.ops.one_fast.triton_one_loss(zf, gf, torch.empty(5, dtype=torch.int64),
                                                     torch.empty(1, dtype=torch.float64), 3.0,
                                                     False, -100, grad)
            want = fused_op.fake_outputs(zf, gf, grad)
            fake_ok.append([(tuple(a.shape), str(a.dtype)) for a in got]
                           == [(tuple(b.shape), str(b.dtype)) for b in want])
    return {
        "graph_breaks": sum(counters["graph_break"].values()),
        "frames": counters["stats"]["unique_graphs"],
        "launches": len(launches),
        # Dynamo turns the launch's num_warps into a one-config autotuner around the kernel
        "kernel_is_ours": [getattr(k, "fn", k) is triton_kernel._one_loss_kernel
                           for k in kernels],
        "num_warps": [[c.num_warps for c in getattr(k, "configs", [])] for k in kernels],
        "cloned": [list(n.kwargs["tensors_to_clone"]) for n in launches],
        "opaque_calls": opaque,
        "forward_outputs": len(graphs[0].graph.find_nodes(op="output")[0].args[0]),
        "fake_matches_contract": fake_ok,
        "schema": str(torch.ops.one_fast.triton_one_loss.default._schema),
    }


if __name__ == "__main__":
    json.dump(main(), sys.stdout)
