"""Linear heads + ONE loss at vocabulary scale: peak memory and time, validated before timing.

Implementations (:mod:`benchmarks.fused_linear_memory`): ``fused-linear``
(:func:`one_fast.fused_linear_one_loss`, logits never whole), ``linear+fused`` (the logits
materialised, then the fused ONE loss) and ``linear+reference`` (materialised, reference loss);
one forward + backward giving the gradients of hidden, weight, bias and gate.

Shapes (N, H, m, V): ``small`` (2048, 256, 4, 16384) runs on the CPU (float32); ``mid``
(4096, 1024, 4, 32768) and ``vocab`` (16384, 4096, 4, 131072) on CUDA in bfloat16.

Each case: (1) validation on the first ``VALIDATE_ROWS`` rows against the float32 specification
(the reference loss of float32 logits from the same, rounded, inputs): relative error of the
loss and of each gradient; (2) peak memory above the inputs -- CPU: a fresh subprocess's peak
RSS (VmHWM); CUDA: ``torch.cuda.max_memory_allocated``; (3) the time (benchmarks/harness.py).

The GPU target at the ``vocab`` shape: ``fused-linear`` peaks at least 4x lower than
``linear+fused`` and takes at most 1.2x its time. Reported, not asserted (compare the two cases'
``peak_extra_mib`` and ``median_ms``); a case that runs out of device memory is skipped with
that reason (the materialised paths may, on an 80 GB H100).

FLOPs: 3 GEMMs of 2 N H m V each (logits, grad_hidden, grad_weight), the least any
implementation does; TFLOP/s = FLOPs / median time.
"""

from __future__ import annotations

import pytest
import torch

from one_fast.loss.fused_linear_chunks import auto_chunk_rows

from .environment import DEVICE, LABEL, is_cuda
from .fused_linear_memory import (
    IMPLS,
    forward_backward,
    make_inputs,
    peak_cuda_extra_mib,
    peak_rss_extra_mib,
)
from .harness import element_size, measure
from .test_loss_bench import relative_error

SHAPES = {"small": (2048, 256, 4, 16384), "mid": (4096, 1024, 4, 32768),
          "vocab": (16384, 4096, 4, 131072)}
DTYPE = torch.bfloat16 if is_cuda() else torch.float32
VALIDATE_ROWS = 64
# Largest relative error ||got - spec|| / ||spec|| accepted, by the inputs' dtype.
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 1e-2}
LOSS_TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2}
CPU_SKIP = ("timed on CUDA only: on the 2-core CPU VM one forward+backward of the mid shape is "
            "3.3e12 FLOPs (about a minute) over 2 GiB of float32 logits")


def _cases() -> list:
    params = []
    for shape in SHAPES:
        for impl in IMPLS:
            marks = []
            if shape != "small":
                marks.append(pytest.mark.gpu)
                if not is_cuda():
                    marks.append(pytest.mark.skip(reason=CPU_SKIP))
            params.append(pytest.param(shape, impl, id=f"{LABEL.lower()}-{shape}-{impl}",
                                       marks=marks))
    return params


def validate(impl: str, inputs) -> dict[str, float]:
    """Errors of ``impl`` on the first rows against the float32 spec; asserts the tolerances."""
    hidden, weight, bias, gate, target = inputs
    rows = slice(0, VALIDATE_ROWS)
    part = [hidden.detach()[rows], weight.detach(), bias.detach(), gate.detach()[rows]]
    got_loss, got = forward_backward(impl, [*(t.clone().requires_grad_() for t in part),
                                            target[rows]], reduction="sum")
    spec_inputs = [*(t.float().requires_grad_() for t in part), target[rows]]
    want_loss, want = forward_backward("linear+reference", spec_inputs, reduction="sum")
    errors = {"loss": relative_error(got_loss, want_loss)}
    assert errors["loss"] <= LOSS_TOLERANCE[DTYPE], f"{impl}: loss off by {errors['loss']:.2e}"
    for name, a, b in zip(("hidden", "weight", "bias", "gate"), got, want, strict=True):
        errors[f"grad_{name}"] = relative_error(a, b)
        assert errors[f"grad_{name}"] <= TOLERANCE[DTYPE], \
            f"{impl}: grad {name} off by {errors[f'grad_{name}']:.2e}"
    return errors


@pytest.mark.parametrize("shape, impl", _cases())
def test_fused_linear(benchmark, shape, impl):
    """Validate, measure the peak memory, then time one forward + backward."""
    n, h, m, v = SHAPES[shape]
    try:
        inputs = make_inputs(n, h, m, v, DTYPE, DEVICE)
        errors = validate(impl, inputs)
        if is_cuda():
            peak = peak_cuda_extra_mib(impl, inputs)
            method = "torch.cuda.max_memory_allocated above the allocated bytes before the call"
        else:
            peak = peak_rss_extra_mib(impl, n, h, m, v)
            method = "peak RSS (VmHWM, reset) of a fresh subprocess above its RSS before the call"
        benchmark.group = f"{LABEL} fused linear {shape} ({n}x{h}x{m}x{v}) {str(DTYPE)[6:]}"
        timing = measure(benchmark, lambda i: forward_backward(impl, inputs), 1,
                         warmup=3 if is_cuda() else 1, min_rounds=3,
                         max_rounds=50 if is_cuda() else 5)
    except torch.cuda.OutOfMemoryError as exc:
        torch.cuda.empty_cache()
        pytest.skip(f"{impl} at {shape}: out of CUDA memory ({str(exc).splitlines()[0]})")
    flops = 3 * 2 * n * h * m * v
    s = element_size(DTYPE)
    benchmark.extra_info.update(
        case=f"fused linear {shape} {impl}", kind="fused_linear", shape=shape, n=n, h=h, m=m,
        v=v, dtype=str(DTYPE)[6:], impl=impl, validation_rel_error=errors,
        peak_extra_mib=peak, memory_method=method,
        logits_mib=n * m * v * s / 2**20,
        chunk_rows=auto_chunk_rows(n, m, v, DTYPE) if impl == "fused-linear" else None,
        flops=flops, target="vocab on CUDA: fused-linear peak >= 4x lower than linear+fused, "
                            "time <= 1.2x")
    if timing is not None:
        benchmark.extra_info.update(timing.as_info(), tflops=flops / timing.median_s / 1e12)
