"""Compile the Triton ONE-loss kernel for real GPUs ahead of time, on a machine without one.

Triton's interpreter (what the CPU tests run) never meets the real compiler, so it cannot see
what only that compiler sees: unsupported operations, type errors in compiled mode, register
spills, shared memory overflow. Triton compiles without a GPU when asked to: this check makes a
stand-in driver the active one (it reports ``GPUTarget("cuda", ARCH, 32)`` and launches
nothing), runs the project's own launcher (:func:`one_fast.loss.triton_kernel.impl`) on CPU
tensors of the real shapes with the launch replaced by ``JITFunction.warmup`` (compile, never
launch), and reads each cubin's registers and stack (spill) bytes with the ``cuobjdump
-res-usage`` that ships inside the triton wheel.

Configurations: the benchmark shapes (128, 3, 100), (256, 5, 1000), (4096, 4, 32768) and
(64, 8, 262144) in float32 and bfloat16, with and without gradients, for both
``detach_teacher`` settings; the tests' strided, transposed and unaligned layouts; float64 (the
gradchecks' dtype) at two shapes, reported but not held to the spill limit. The tensors are
allocated but never written (untouched pages cost no memory).

Usage::

    python -m benchmarks.triton_compile_check [--arch 90 80] [--max-spill 32]

Prints one table per architecture (configuration -> grid, warps, rows x block, registers, spill
bytes, shared memory) and exits 1 on any compile error, or when a float32/bfloat16
configuration spills more than ``--max-spill`` bytes.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

SHAPES = {"cifar": (128, 3, 100), "imagenet": (256, 5, 1000), "vocab": (4096, 4, 32768),
          "wide": (64, 8, 262144)}
LAYOUTS = ("strided", "transposed", "unaligned")
MAX_SPILL_BYTES = 32
IGNORE = -100


@dataclass(frozen=True)
class Config:
    """One call of the launcher: shape, logits dtype, gradients, detach_teacher, layout."""

    shape: str
    dtype: str
    grad: bool
    detach: bool
    layout: str = "contiguous"

    @property
    def name(self) -> str:
        return (f"{self.shape} {self.dtype} {'fwd+bwd' if self.grad else 'fwd'} "
                f"{'detach' if self.detach else 'no-detach'} {self.layout}")


@dataclass(frozen=True)
class Compiled:
    """What one configuration compiled to."""

    config: Config
    grid: tuple[int, ...]
    num_warps: int
    rows: int
    block_c: int
    registers: int
    spill_bytes: int  # the stack frame: where ptxas puts spilled registers
    shared_bytes: int


def configurations() -> list[Config]:
    """Every configuration the check compiles (see the module docstring)."""
    configs = [Config(shape, dtype, grad, detach)
               for shape in SHAPES for dtype in ("float32", "bfloat16")
               for grad in (True, False) for detach in (True, False)]
    configs += [Config("cifar", "float32", True, False, layout) for layout in LAYOUTS]
    configs += [Config("imagenet", "bfloat16", True, True, "unaligned")]
    configs += [Config(shape, "float64", True, False) for shape in ("cifar", "imagenet")]
    return configs


def make_inputs(config: Config):
    """logits (N, m, C), gate (N, m), target (N,) on the CPU, laid out as ``config`` says."""
    import torch

    n, m, c = SHAPES[config.shape]
    dtype = getattr(torch, config.dtype)
    gate_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    target = torch.zeros(n, dtype=torch.int64)
    if config.layout == "contiguous":
        return torch.empty(n, m, c, dtype=dtype), torch.empty(n, m, dtype=gate_dtype), target
    if config.layout == "strided":  # as tests/loss/helpers.py: every dim strided but classes
        logits = torch.empty(n, 2 * m, c + 5, dtype=dtype)[:, ::2, 2:c + 2]
        gate = torch.empty(n, 3 * m, dtype=gate_dtype)[:, 1::3]
        return logits, gate, torch.zeros(2 * n, dtype=torch.int64)[::2]
    if config.layout == "transposed":  # classes not innermost: the launcher copies them
        logits = torch.empty(c, n, m, dtype=dtype).permute(1, 2, 0)
        return logits, torch.empty(m, n, dtype=gate_dtype).t(), target
    if config.layout == "unaligned":  # one element into the storage: no 16-byte alignment
        logits = torch.empty(n * m * c + 1, dtype=dtype)[1:].view(n, m, c)
        return logits, torch.empty(n, m, dtype=gate_dtype), target
    raise ValueError(f"unknown layout {config.layout!r}")


def stand_in_driver(arch: int):
    """An active Triton driver for a GPU that is not there: it names the target and the
    current device (the architecture number, so each architecture has its own kernel cache)."""
    from triton.backends.compiler import GPUTarget

    class StandInDriver:
        def get_current_target(self):
            return GPUTarget("cuda", arch, 32)

        def get_current_device(self):
            return arch

        def get_current_stream(self, device=None):
            return 0

    return StandInDriver()


class WarmupInsteadOfLaunch:
    """Within ``with``, every launch ``kernel[grid](*args, **meta)`` of the ``@triton.jit``
    kernel compiles only (``JITFunction.run(warmup=True)``, what ``warmup`` calls) and records
    (grid, meta, compiled kernel). The kernel object itself stays in place, so the launcher's
    ``torch.library.wrap_triton(kernel)`` still sees a ``JITFunction``."""

    def __init__(self, kernel) -> None:
        self.kernel = kernel
        self.calls: list[tuple[tuple[int, ...], dict, object]] = []

    def _compile(self, *args, grid, warmup, **meta):
        compiled = type(self.kernel).run(self.kernel, *args, grid=grid, warmup=True, **meta)
        # every argument by name: a launch through wrap_triton passes constexprs positionally
        named = {**dict(zip(self.kernel.arg_names, args, strict=False)), **meta}
        self.calls.append((tuple(grid), named, compiled))
        return compiled

    def __enter__(self) -> WarmupInsteadOfLaunch:
        self.kernel.run = self._compile  # shadows JITFunction.run for this object only
        return self

    def __exit__(self, *exc) -> None:
        del self.kernel.run


def cuobjdump() -> Path:
    """The cuobjdump shipped inside the triton wheel."""
    import triton

    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not path.exists():
        raise FileNotFoundError(f"cuobjdump not found in the triton wheel ({path})")
    return path


def resource_usage(cubin: bytes, tool: Path) -> dict[str, int]:
    """REG, STACK, SHARED, LOCAL of the one function in ``cubin`` (cuobjdump -res-usage)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        out = subprocess.run([str(tool), "-res-usage", str(path)], capture_output=True,
                             text=True, check=True).stdout
    found = dict(re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", out))
    if "REG" not in found:
        raise RuntimeError(f"cuobjdump -res-usage gave no register count:\n{out}")
    return {key: int(value) for key, value in found.items()}


def compile_config(config: Config, arch: int, tool: Path) -> Compiled:
    """Run the launcher for ``config`` with compilation in place of the launch."""
    import torch
    import triton

    from one_fast.loss import triton_kernel as triton_loss

    logits, gate, target = make_inputs(config)
    # (no reset afterwards: without a GPU there is no default driver to go back to)
    triton.runtime.driver.set_active(stand_in_driver(arch))
    with WarmupInsteadOfLaunch(triton_loss._one_loss_kernel) as proxy:
        triton_loss.impl(logits, gate, target, torch.ones(1, dtype=torch.float64), 3.0,
                         config.detach, IGNORE, config.grad)
    if len(proxy.calls) != 1:
        raise RuntimeError(f"{config.name}: the launcher compiled {len(proxy.calls)} kernels")
    grid, meta, kernel = proxy.calls[0]
    usage = resource_usage(kernel.asm["cubin"], tool)
    shared = max(usage.get("SHARED", 0), int(getattr(kernel.metadata, "shared", 0)))
    return Compiled(config, grid, meta["num_warps"], meta["ROWS"], meta["BLOCK_C"],
                    usage["REG"], usage.get("STACK", 0), shared)


def table(arch: int, results: list[Compiled]) -> str:
    """The printed table for one architecture."""
    head = (f"{'sm_' + str(arch) + ' configuration':<46} {'grid':>8} {'warps':>5} "
            f"{'rows x block':>13} {'regs':>5} {'spill B':>8} {'smem B':>7}")
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(f"{r.config.name:<46} {r.grid[0]:>8} {r.num_warps:>5} "
                     f"{f'{r.rows} x {r.block_c}':>13} {r.registers:>5} {r.spill_bytes:>8} "
                     f"{r.shared_bytes:>7}")
    return "\n".join(lines)


def _compile_task(task: tuple[int, Config]) -> Compiled | str:
    """Worker: one (architecture, configuration); a compile error comes back as a line."""
    os.environ.pop("TRITON_INTERPRET", None)  # before the worker first imports the kernel
    arch, config = task
    try:
        return compile_config(config, arch, cuobjdump())
    except Exception as exc:  # any compiler error fails the check, with its reason
        first = (str(exc).strip().splitlines() or [""])[0]
        return f"sm_{arch} {config.name}: {type(exc).__name__}: {first}"


def check(arches: list[int], max_spill: int, jobs: int) -> list[str]:
    """Compile every configuration for every architecture (``jobs`` processes); print the
    tables; return the failures."""
    import triton

    cuobjdump()  # fail early when the wheel lacks it
    start = time.perf_counter()
    tasks = [(arch, config) for arch in arches for config in configurations()]
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        outcomes = list(pool.map(_compile_task, tasks))
    print(f"triton {triton.__version__}: the ONE-loss kernel compiled ahead of time for "
          f"{', '.join(f'sm_{a}' for a in arches)} (no GPU; nothing launched), {len(tasks)} "
          f"compilations in {time.perf_counter() - start:.0f} s with {jobs} processes")
    failures = [o for o in outcomes if isinstance(o, str)]
    for arch in arches:
        results = [o for (a, _), o in zip(tasks, outcomes, strict=True)
                   if a == arch and isinstance(o, Compiled)]
        print(table(arch, results) + "\n")
        failures += [f"sm_{arch} {r.config.name}: {r.spill_bytes} bytes of spills "
                     f"(limit {max_spill})" for r in results
                     if r.config.dtype != "float64" and r.spill_bytes > max_spill]
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[90, 80],
                        help="compute capabilities to compile for (default: 90 80)")
    parser.add_argument("--max-spill", type=int, default=MAX_SPILL_BYTES,
                        help="spill bytes allowed for a float32/bfloat16 configuration")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="compiler processes (default: one per CPU core)")
    args = parser.parse_args(argv)
    failures = check(args.arch, args.max_spill, max(1, args.jobs))
    for failure in failures:
        print(f"FAILED {failure}")
    print("triton compile check:", "FAILED" if failures else "passed")
    return 1 if failures else 0


if __name__ == "__main__":
    # triton.jit picks interpreter-or-compiler when the kernel is defined (at import): this
    # check needs the compiler, whatever the calling environment says.
    os.environ.pop("TRITON_INTERPRET", None)
    sys.exit(main())
