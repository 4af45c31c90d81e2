"""The fused linear + ONE loss never holds the (N, m, V) logits: peak RSS on the CPU.

Shape (N, H, m, V) = (2048, 256, 4, 16384), float32, the default chunk size (256 rows, by the
rule in one_fast.loss.fused_linear_chunks). Each variant runs forward + backward in a fresh
subprocess that measures its own peak RSS (``VmHWM``, reset to the current RSS once the inputs
exist and a small warm-up call has loaded every library) during the call
(:func:`benchmarks.fused_linear_memory.peak_rss_extra_mib`, shared with the benchmark; it says
why not ``ru_maxrss``: a subprocess inherits its parent's high-water mark there).

The bound, derived from what the fused path allocates (MiB = 2**20 bytes):

* forward: one chunk's logits and their gradient, 2 x 256 x 4 x 16384 x 4 B = 128 MiB (the
  previous chunk's are freed before the next chunk's logits exist), plus the float32
  grad_weight accumulator (m, V, H), 4 x 16384 x 256 x 4 B = 64 MiB;
* backward: the accumulator and the gradient handed to autograd, 2 x 64 MiB = 128 MiB;
* both: grad_hidden, grad_bias, grad_gate and the per-row terms, 2.3 MiB;
* 64 MiB allowance for the allocator, GEMM workspaces and thread buffers.

So the fused peak must stay within max(128 + 64, 128) + 64 = 256 MiB of the RSS before the
call (measured: 195 MiB), while materialising the logits and their gradient takes
2 x 2048 x 4 x 16384 x 4 B = 1024 MiB. The same measurement of the materialised path (linear
heads + the fused ONE loss) must show at least those 1024 MiB (measured: 1034 MiB) -- the
check that the measurement can see what it is meant to bound.
"""

from __future__ import annotations

import sys

import pytest

from benchmarks.fused_linear_memory import peak_rss_extra_mib

MIB = 2**20
N, H, M, V = 2048, 256, 4, 16384
LOGITS_AND_GRAD_MIB = 2 * N * M * V * 4 // MIB  # 1024
FUSED_BOUND_MIB = 128 + 64 + 64  # chunk logits + gradient, accumulator, allowance


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status: Linux")
def test_fused_peak_memory_stays_far_below_materialised_logits():
    fused = peak_rss_extra_mib("fused-linear", N, H, M, V)
    assert fused <= FUSED_BOUND_MIB, (f"fused path peaked {fused:.0f} MiB above baseline, "
                                      f"bound {FUSED_BOUND_MIB} MiB")
    materialised = peak_rss_extra_mib("linear+fused", N, H, M, V)
    assert materialised >= LOGITS_AND_GRAD_MIB, (
        f"materialised path peaked only {materialised:.0f} MiB: the measurement misses "
        f"the {LOGITS_AND_GRAD_MIB} MiB of logits + gradient it should see")
    print(f"peak RSS above baseline: fused {fused:.0f} MiB, materialised {materialised:.0f} MiB")


# accum_dtype: the formula of fused_linear_one_loss's docstring, at a shape where the weight
# accumulator dominates. (N, H, m, V) = (256, 1024, 4, 16384), bf16 hidden/weight/bias, 16-row
# chunks. G = N H + m V H + m V = 67,436,544 gradient elements, s = 2 bytes; the chunk's logits
# and gradient take 2 x 16 x 4 x 16384 x 2 B = 4 MiB, and on the CPU with float32 accumulators
# the chunk's gradient in float32 4 MiB more. Peak = max(a G + chunk, (a + s) G): float32
# accumulators (a = 4): 386 MiB (measured: 394-419 MiB in four runs); bf16 (a = 2): 257 MiB
# (measured: 262 MiB). The allowance is the same 64 MiB as above.
ACC_SHAPE = (256, 1024, 4, 16384)
ACC_CHUNK = 16
ACC_G = 256 * 1024 + 4 * 16384 * 1024 + 4 * 16384
ALLOWANCE_MIB = 64


def accum_bound_mib(accum_bytes: int, weight_bytes: int = 2) -> float:
    """The docstring's peak, max(a G + 2 c m V s (+ c m V a on the CPU when a != s),
    (a + s) G), in MiB."""
    rows = ACC_CHUNK * ACC_SHAPE[2] * ACC_SHAPE[3]
    chunk = 2 * rows * weight_bytes + (rows * accum_bytes if accum_bytes != weight_bytes else 0)
    return max((accum_bytes * ACC_G + chunk) / MIB, (accum_bytes + weight_bytes) * ACC_G / MIB)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status: Linux")
def test_accum_dtype_memory_follows_the_documented_formula():
    import torch

    peaks = {}
    for name, accum, accum_bytes in (("float32", None, 4), ("bfloat16", torch.bfloat16, 2)):
        peaks[name] = peak_rss_extra_mib("fused-linear", *ACC_SHAPE, torch.bfloat16,
                                         chunk_size=ACC_CHUNK, accum_dtype=accum)
        bound = accum_bound_mib(accum_bytes) + ALLOWANCE_MIB
        assert peaks[name] <= bound, (f"accum {name}: peaked {peaks[name]:.0f} MiB above "
                                      f"baseline, bound {bound:.0f} MiB")
    # the measurement sees what the formula says bf16 accumulators save: 2 bytes x G
    saving = accum_bound_mib(4) - accum_bound_mib(2)
    assert peaks["float32"] - peaks["bfloat16"] >= 0.75 * saving, peaks
    print(f"peak RSS above baseline: float32 accumulators {peaks['float32']:.0f} MiB "
          f"(formula {accum_bound_mib(4):.0f}), bf16 {peaks['bfloat16']:.0f} MiB "
          f"(formula {accum_bound_mib(2):.0f})")
