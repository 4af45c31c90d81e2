"""The fused linear + ONE loss never holds the (N, m, V) logits: peak RSS on the CPU.

Shape (N, H, m, V) = (2048, 256, 4, 16384), float32, the default chunk size (256 rows, by the
rule in one_fast.loss.fused_linear_chunks). Each variant runs forward + backward in a fresh
subprocess that measures its own peak RSS (``ru_maxrss``) before the call (after creating the
inputs and a small warm-up call that loads every library) and after it.

The bound, derived from what the fused path allocates (MiB = 2**20 bytes):

* one chunk's logits and their gradient: 2 x 256 x 4 x 16384 x 4 B = 128 MiB;
* the float32 grad_weight accumulator (m, V, H) and, in backward, its scaled copy (the
  gradient handed to autograd): 2 x 4 x 16384 x 256 x 4 B = 128 MiB (grad_hidden, grad_bias,
  grad_gate and the per-row terms: 2.3 MiB);
* 64 MiB allowance for the allocator, GEMM workspaces and thread buffers.

So the fused peak must stay below 320 MiB above the baseline, while materialising the logits
and their gradient takes 2 x 2048 x 4 x 16384 x 4 B = 1024 MiB. The same measurement of the
materialised path (linear heads + the fused ONE loss) must show at least those 1024 MiB -- the
check that the measurement can see what it is meant to bound.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MIB = 2**20
N, H, M, V = 2048, 256, 4, 16384
LOGITS_AND_GRAD_MIB = 2 * N * M * V * 4 // MIB  # 1024
FUSED_BOUND_MIB = 128 + 128 + 64  # chunk logits + gradient, accumulator + its copy, allowance

CHILD = r"""
import json, resource, sys
import torch
from one_fast import fused_linear_one_loss, one_loss

torch.set_num_threads(1)
mode, (n, h, m, v) = sys.argv[1], map(int, sys.argv[2:6])


def run(n, h, m, v):
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(n, h, generator=gen).requires_grad_()
    weight = (torch.randn(m, v, h, generator=gen) / h ** 0.5).requires_grad_()
    bias = torch.zeros(m, v).requires_grad_()
    gate = torch.softmax(torch.randn(n, m, generator=gen), 1).requires_grad_()
    target = torch.randint(0, v, (n,), generator=gen)
    yield
    if mode == "fused":
        loss = fused_linear_one_loss(hidden, weight, gate, target, bias=bias)
    else:
        logits = torch.einsum("nh,mvh->nmv", hidden, weight) + bias
        loss = one_loss(logits, gate, target)
    loss.backward()
    yield float(loss)


for _ in run(8, 4, 2, 16):  # warm-up: load every library and kernel before the baseline
    pass
steps = run(n, h, m, v)
next(steps)  # inputs created
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
loss = next(steps)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"base_kib": base, "peak_kib": peak, "loss": loss}))
"""


def peak_extra_mib(mode: str) -> float:
    """Peak RSS growth (MiB) of one forward + backward of ``mode`` in a fresh process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", CHILD, mode, str(N), str(H), str(M), str(V)],
                         check=True, capture_output=True, text=True, cwd=ROOT, env=env)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return (result["peak_kib"] - result["base_kib"]) / 1024  # ru_maxrss is in KiB on Linux


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss in KiB: Linux")
def test_fused_peak_memory_stays_far_below_materialised_logits():
    fused = peak_extra_mib("fused")
    assert fused <= FUSED_BOUND_MIB, (f"fused path peaked {fused:.0f} MiB above baseline, "
                                      f"bound {FUSED_BOUND_MIB} MiB")
    materialised = peak_extra_mib("materialised")
    assert materialised >= LOGITS_AND_GRAD_MIB, (
        f"materialised path peaked only {materialised:.0f} MiB: the measurement misses "
        f"the {LOGITS_AND_GRAD_MIB} MiB of logits + gradient it should see")
    print(f"peak RSS above baseline: fused {fused:.0f} MiB, materialised {materialised:.0f} MiB")
