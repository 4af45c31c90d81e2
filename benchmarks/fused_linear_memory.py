"""Peak memory of one forward + backward of the linear heads + ONE loss, three ways.

Implementations (``IMPLS``), all computing the ONE loss of ``hidden @ weight[i].T + bias[i]``:

* ``fused-linear`` — :func:`one_fast.fused_linear_one_loss` (chunked, logits never whole);
* ``linear+fused`` — the logits materialised by one einsum, then ``one_loss`` (backend "auto":
  the fused kernel);
* ``linear+reference`` — the same logits, then the PyTorch reference loss.

CPU: :func:`peak_rss_extra_mib` runs one case in a fresh subprocess and reports how far its peak
RSS rose above its RSS after the inputs were created (and a small warm-up call had loaded every
library). The peak is ``VmHWM`` from ``/proc/self/status``, reset to the current RSS before the
call (``/proc/self/clear_refs``), not ``getrusage().ru_maxrss``: a child started by
``subprocess`` (vfork + exec) inherits its parent's high-water mark in ``ru_maxrss``, so a
benchmark or test process holding a few GB would hide the child's peak entirely (measured: a
fused case read 0 MiB that way inside the benchmark process, 197 MiB from a small one).
CUDA: :func:`peak_cuda_extra_mib` measures in-process
with ``torch.cuda.max_memory_allocated`` above the allocated bytes before the call.
Used by ``benchmarks/test_fused_linear_bench.py`` and ``tests/loss/test_fused_linear_memory.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from one_fast import fused_linear_one_loss, one_loss

ROOT = Path(__file__).resolve().parents[1]
MIB = 2**20
IMPLS = ("fused-linear", "linear+fused", "linear+reference")


def make_inputs(n, h, m, v, dtype, device, seed=0):
    """hidden (N, H), weight (m, V, H), bias (m, V) requiring grad; gate (N, m); target (N,).

    The gate is float32 (a softmax output, which autocast keeps in float32).
    """
    gen = torch.Generator(device=device).manual_seed(seed)
    hidden = torch.randn(n, h, generator=gen, device=device).to(dtype).requires_grad_()
    weight = (torch.randn(m, v, h, generator=gen, device=device) * (3.0 / h ** 0.5)).to(dtype)
    bias = torch.zeros(m, v, device=device, dtype=dtype)
    gate = torch.softmax(torch.randn(n, m, generator=gen, device=device), 1)
    target = torch.randint(0, v, (n,), generator=gen, device=device)
    return (hidden, weight.requires_grad_(), bias.requires_grad_(), gate.requires_grad_(),
            target)


def loss_of(impl: str, hidden, weight, bias, gate, target, **opts) -> torch.Tensor:
    """The loss of ``impl`` (one of :data:`IMPLS`) on these inputs."""
    if impl == "fused-linear":
        return fused_linear_one_loss(hidden, weight, gate, target, bias=bias, **opts)
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    logits = torch.einsum("nh,mvh->nmv", hidden, weight) + bias
    backend = "reference" if impl == "linear+reference" else "auto"
    return one_loss(logits, gate, target, backend=backend, **opts)


def forward_backward(impl: str, inputs, **opts):
    """Loss and the gradients w.r.t. hidden, weight, bias and gate."""
    loss = loss_of(impl, *inputs, **opts)
    return loss, torch.autograd.grad(loss, inputs[:4])


_CHILD = r"""
import json, sys
import torch
from benchmarks.fused_linear_memory import forward_backward, make_inputs


def status_kib(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


torch.set_num_threads(1)
impl, (n, h, m, v) = sys.argv[1], map(int, sys.argv[2:6])
dtype = getattr(torch, sys.argv[6])
opts = json.loads(sys.argv[7])
if opts.get("accum_dtype") is not None:
    opts["accum_dtype"] = getattr(torch, opts["accum_dtype"])
forward_backward(impl, make_inputs(8, 4, 2, 16, dtype, "cpu"), **opts)  # warm-up
inputs = make_inputs(n, h, m, v, dtype, "cpu")
try:  # reset the high-water mark to the current RSS (Linux >= 4.0), dropping freed temporaries
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
except OSError:
    pass
base = status_kib("VmHWM")
loss, grads = forward_backward(impl, inputs, **opts)
peak = status_kib("VmHWM")
print(json.dumps({"base_kib": base, "peak_kib": peak, "loss": float(loss)}))
"""


def peak_rss_extra_mib(impl: str, n: int, h: int, m: int, v: int,
                       dtype: torch.dtype = torch.float32, **opts) -> float:
    """Peak RSS growth (MiB) of one forward + backward on the CPU, in a fresh process.

    Args:
        impl, n, h, m, v: the implementation and shape (N, H, m, V).
        dtype: of hidden, weight and bias.
        opts: keyword arguments of the loss (JSON-able; ``accum_dtype`` as a torch dtype).

    Linux only (``/proc/self/status``); one torch thread.
    """
    if opts.get("accum_dtype") is not None:
        opts["accum_dtype"] = str(opts["accum_dtype"]).removeprefix("torch.")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    args = [impl, str(n), str(h), str(m), str(v), str(dtype).removeprefix("torch."),
            json.dumps(opts)]
    out = subprocess.run([sys.executable, "-c", _CHILD, *args],
                         check=True, capture_output=True, text=True, cwd=ROOT, env=env)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return (result["peak_kib"] - result["base_kib"]) / 1024


def peak_cuda_extra_mib(impl: str, inputs, **opts) -> float:
    """Peak CUDA memory (MiB, ``max_memory_allocated``) above the level before the call."""
    device = inputs[0].device
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    result = forward_backward(impl, inputs, **opts)
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    del result
    return (peak - base) / MIB
