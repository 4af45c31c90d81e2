"""The Triton launcher's configuration choices (what the ahead-of-time compile check measures:
``python -m benchmarks.triton_compile_check``)."""

from __future__ import annotations

import pytest

triton_loss = pytest.importorskip("one_fast.loss.triton_kernel")

BENCHMARK_SHAPES = [(128, 3, 100), (256, 5, 1000), (4096, 4, 32768), (64, 8, 262144)]


def test_float64_accumulation_uses_at_most_eight_warps():
    """16 warps cap a thread at 128 registers; float64 state then spills (216 bytes at
    (256, 5, 1000) on sm_90, measured by the compile check), 8 warps allow 255."""
    for n, m, c in BENCHMARK_SHAPES:
        assert triton_loss._launch_config(n, m, c, float64=True)[3] <= 8, (n, m, c)
    # float32 keeps 16 warps for large tiles of 8 branches
    assert triton_loss._launch_config(256, 5, 1000)[3] == 16
