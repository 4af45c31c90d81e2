"""ONE loss throughput: every backend side by side, each validated against the reference first.

Cases: shape (CIFAR, ImageNet, vocabulary scale) x logits dtype (float32, bfloat16) x pass
(forward+backward, forward only) x implementation:

* ``reference`` — the PyTorch specification, eager (:mod:`one_fast.loss.reference`);
* ``reference-compiled`` — the same under ``torch.compile(fullgraph=True)``;
* ``triton`` — the fused Triton kernel (CUDA only here: its CPU interpreter is for tests);
* ``native`` — the fused C++/CUDA operator, where the extension was built for the device.

Bytes moved (the least any implementation must move; see BENCHMARKS.md): the inputs read once
(logits N·m·C, gate N·m, targets N) and, for forward+backward, the gradients written once
(logits N·m·C, gate N·m). GB/s = bytes / median time; "of copy" divides by the copy bandwidth
measured in the same session.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from one_fast.loss import BACKENDS, one_loss, unavailable_reason

from .environment import DEVICE, LABEL, is_cuda
from .harness import element_size, measure, rotation_count

SHAPES = {"cifar": (128, 3, 100), "imagenet": (256, 5, 1000), "vocab": (4096, 4, 32768)}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
PASSES = ("fwd_bwd", "fwd")
IMPLS = ("reference", "triton", "native", "reference-compiled")
# The gate comes out of a softmax, which autocast keeps in float32: so does the benchmark.
GATE_DTYPE = torch.float32
TARGET_DTYPE = torch.int64
# Largest relative error ||got - ref|| / ||ref|| accepted, by the dtype of the compared tensor
# (the loss is float32 either way; from bfloat16 logits both compute in float32 too).
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 1e-2}
LOSS_TOLERANCE = 1e-5
VOCAB_CPU_REASON = ("vocab shape on the CPU: tens of seconds per round and a peak RSS of over "
                    "10 GB (BENCHMARKS.md, CPU results); timed on CUDA only")


@dataclass(frozen=True)
class LossCase:
    """One benchmark case."""

    shape: str
    dtype: str
    pass_: str
    impl: str

    @property
    def id(self) -> str:
        return f"{LABEL.lower()}-{self.shape}-{self.dtype}-{self.impl}-{self.pass_}"

    @property
    def group(self) -> str:
        n, m, c = SHAPES[self.shape]
        return f"{LABEL} loss {self.shape} ({n}x{m}x{c}) {self.dtype} {self.pass_}"


def skip_reason(case: LossCase) -> str | None:
    """Why ``case`` cannot be timed on this machine, or None."""
    if not is_cuda():
        if case.impl == "triton":
            return ("triton: timed on CUDA only (on the CPU it runs only under "
                    "TRITON_INTERPRET=1, a correctness tool far too slow to time)")
        if case.dtype == "bfloat16":
            return "bfloat16: timed on CUDA only (the engine uses bf16 only with CUDA autocast)"
        if case.shape == "vocab":
            return VOCAB_CPU_REASON
    if case.impl in BACKENDS:  # "reference-compiled" is the reference, which runs anywhere
        return unavailable_reason(case.impl, DEVICE)
    return None


def _cases() -> list:
    params = []
    # Compiled cases last: they are the slowest to set up, so a run cut short by a time limit
    # still has every other implementation side by side.
    for impl in IMPLS:
        for shape in SHAPES:
            for dtype in DTYPES:
                for pass_ in PASSES:
                    case = LossCase(shape, dtype, pass_, impl)
                    marks = []
                    if impl == "triton" or dtype == "bfloat16" or shape == "vocab":
                        marks.append(pytest.mark.gpu)
                    reason = skip_reason(case)
                    if reason:
                        marks.append(pytest.mark.skip(reason=reason))
                    params.append(pytest.param(case, id=case.id, marks=marks))
    return params


def loss_function(impl: str):
    """``f(logits, gate, target) -> loss`` for an implementation (compiled on first call)."""
    backend = "reference" if impl == "reference-compiled" else impl

    def loss(logits, gate, target):
        return one_loss(logits, gate, target, temperature=3.0, kl_weight=1.0, backend=backend)

    if impl == "reference-compiled":
        torch._dynamo.reset()  # each case compiles afresh, never hitting the recompile limit
        return torch.compile(loss, fullgraph=True, dynamic=False)
    return loss


def make_inputs(n: int, m: int, c: int, dtype: torch.dtype, requires_grad: bool):
    """Fresh random logits (N, m, C), gate (N, m) rows summing to 1, targets (N,)."""
    logits = (2 * torch.randn(n, m, c, device=DEVICE)).to(dtype)
    gate = torch.softmax(torch.randn(n, m, device=DEVICE), dim=1).to(GATE_DTYPE)
    target = torch.randint(0, c, (n,), device=DEVICE, dtype=TARGET_DTYPE)
    return logits.requires_grad_(requires_grad), gate.requires_grad_(requires_grad), target


def run_pass(fn, inputs, with_grad: bool):
    """One forward (+ backward) pass; returns the loss and the gradients (or none)."""
    logits, gate, target = inputs
    if not with_grad:
        with torch.no_grad():
            return fn(logits, gate, target), ()
    loss = fn(logits, gate, target)
    return loss, torch.autograd.grad(loss, (logits, gate))


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """||got - want|| / ||want|| in float64; infinite if ``got`` holds a NaN or an inf."""
    got, want = got.detach().double(), want.detach().double()
    if not torch.isfinite(got).all():
        return float("inf")
    return float((got - want).norm() / want.norm().clamp_min(1e-300))


def validate(fn, inputs, with_grad: bool, impl: str) -> dict[str, float]:
    """Compare ``fn`` with the eager reference on ``inputs``; assert; return the errors."""
    loss, grads = run_pass(fn, inputs, with_grad)
    assert torch.isfinite(loss).all(), f"{impl}: non-finite loss {loss}"
    if impl == "reference":
        return {}
    ref_loss, ref_grads = run_pass(loss_function("reference"), inputs, with_grad)
    errors = {"loss": relative_error(loss, ref_loss)}
    assert errors["loss"] <= LOSS_TOLERANCE, f"{impl}: loss off by {errors['loss']:.2e}"
    names = ("grad_logits", "grad_gate")[:len(ref_grads)]
    for name, got, want in zip(names, grads, ref_grads, strict=True):
        assert got.dtype == want.dtype, f"{impl}: {name} is {got.dtype}, reference {want.dtype}"
        errors[name] = relative_error(got, want)
        assert errors[name] <= TOLERANCE[want.dtype], \
            f"{impl}: {name} off by {errors[name]:.2e} (tolerance {TOLERANCE[want.dtype]:.0e})"
    return errors


def bytes_moved(n: int, m: int, c: int, dtype: torch.dtype, with_grad: bool) -> int:
    """Inputs read once, plus (forward+backward) the gradients written once."""
    inputs = n * m * c * element_size(dtype) + n * m * element_size(GATE_DTYPE) \
        + n * element_size(TARGET_DTYPE)
    grads = n * m * c * element_size(dtype) + n * m * element_size(GATE_DTYPE)
    return inputs + (grads if with_grad else 0)


@pytest.mark.parametrize("case", _cases())
def test_one_loss(benchmark, copy_bandwidth, case: LossCase):
    """Validate one implementation against the reference, then time it on rotated inputs."""
    n, m, c = SHAPES[case.shape]
    dtype = DTYPES[case.dtype]
    with_grad = case.pass_ == "fwd_bwd"
    input_bytes = bytes_moved(n, m, c, dtype, with_grad=False)
    sets = [make_inputs(n, m, c, dtype, with_grad) for _ in range(rotation_count(input_bytes))]
    fn = loss_function(case.impl)
    errors = validate(fn, make_inputs(n, m, c, dtype, with_grad), with_grad, case.impl)

    benchmark.group = case.group
    timing = measure(benchmark, lambda i: run_pass(fn, sets[i], with_grad), len(sets),
                     max_rounds=500 if is_cuda() else 200)
    moved = bytes_moved(n, m, c, dtype, with_grad)
    benchmark.extra_info.update(
        case=f"loss {case.shape} {case.dtype} {case.pass_} {case.impl}", kind="loss",
        shape=case.shape, n=n, m=m, c=c, dtype=case.dtype, pass_=case.pass_, impl=case.impl,
        rotation_sets=len(sets), validation_rel_error=errors, bytes_moved=moved,
        copy_gbps=copy_bandwidth["gbps"], copy_method=copy_bandwidth["method"])
    if timing is not None:
        gbps = moved / timing.median_s / 1e9
        benchmark.extra_info.update(timing.as_info(), gbps=gbps,
                                    fraction_of_copy=gbps / copy_bandwidth["gbps"])
