"""Registers and spills of every native CUDA kernel instantiation, from ``nvcc -Xptxas -v``.

Compiles ``kernels/one_loss_cuda.cu`` (it needs no torch headers) for each architecture, prints
one row per kernel instantiation ``one_loss_kernel<T, A, VEC, MAXM>``, and fails when a kernel
that the dispatcher picks for m <= 4 branches (every MAXM = 4 kernel, and the float64 kernel,
which serves every m) spills: those serve the usual ONE configurations (CIFAR: m = 3, 4).

Usage::

    python -m benchmarks.native_ptxas_check [--arch 90 80]

Exit status 1 on a compile error or such a spill; 2 when nvcc is not found.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1] / "kernels" / "one_loss_cuda.cu"


@dataclass(frozen=True)
class KernelUsage:
    """ptxas's report for one kernel instantiation."""

    name: str  # "one_loss_kernel<float, float, 4, 4>" (or the mangled name without c++filt)
    registers: int
    stack_bytes: int
    spill_stores: int
    spill_loads: int

    @property
    def picked_for_small_m(self) -> bool:
        """Whether the dispatcher launches this kernel for some m <= 4."""
        return self.name.endswith(", 4>") or self.name.startswith("one_loss_kernel<double")


def parse_ptxas(stderr: str) -> list[KernelUsage]:
    """One :class:`KernelUsage` per entry function in ``ptxas -v`` output."""
    rows, name, frame = [], None, (0, 0, 0)
    for line in stderr.splitlines():
        if found := re.search(r"Compiling entry function '(\w+)'", line):
            name = found.group(1)
        elif found := re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, "
                                r"(\d+) bytes spill loads", line):
            frame = tuple(int(v) for v in found.groups())
        elif (found := re.search(r"Used (\d+) registers", line)) and name:
            rows.append([name, int(found.group(1)), *frame])
            name, frame = None, (0, 0, 0)
    if shutil.which("c++filt") and rows:
        pretty = subprocess.run(["c++filt"], input="\n".join(r[0] for r in rows),
                                capture_output=True, text=True).stdout.splitlines()
        for row, demangled in zip(rows, pretty, strict=False):
            if found := re.search(r"one_loss_kernel<[^()]*>", demangled):
                row[0] = found.group(0).replace("one_fast::", "")
    return [KernelUsage(*row) for row in rows]


def compile_report(arch: int) -> list[KernelUsage]:
    """nvcc -O3 -arch=sm_ARCH -Xptxas -v -c on the kernel source; raises on a compile error."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = ["nvcc", "-std=c++17", "-O3", f"-arch=sm_{arch}", "-Xptxas", "-v", "-c",
               str(SOURCE), "-o", str(Path(tmp) / "one_loss_cuda.o")]
        proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-4000:]}")
    return sorted(parse_ptxas(proc.stderr), key=lambda k: k.name)


def table(arch: int, kernels: list[KernelUsage]) -> str:
    """The printed table for one architecture."""
    head = (f"{'sm_' + str(arch) + ' kernel (T, A, VEC, MAXM)':<40} {'m<=4':>5} {'regs':>5} "
            f"{'stack':>6} {'spill st':>9} {'spill ld':>9}")
    lines = [head, "-" * len(head)]
    for k in kernels:
        lines.append(f"{k.name:<40} {'yes' if k.picked_for_small_m else '':>5} "
                     f"{k.registers:>5} {k.stack_bytes:>6} {k.spill_stores:>9} "
                     f"{k.spill_loads:>9}")
    return "\n".join(lines)


def small_m_spills(kernels: list[KernelUsage]) -> list[KernelUsage]:
    """The kernels picked for m <= 4 that spill."""
    return [k for k in kernels if k.picked_for_small_m and (k.spill_stores or k.spill_loads)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[90, 80],
                        help="compute capabilities to compile for (default: 90 80)")
    args = parser.parse_args(argv)
    if shutil.which("nvcc") is None:
        print("nvcc not found: native kernel register check not run")
        return 2
    failures = []
    for arch in args.arch:
        try:
            kernels = compile_report(arch)
        except RuntimeError as exc:
            failures.append(f"sm_{arch}: {exc}")
            continue
        print(table(arch, kernels) + "\n")
        failures += [f"sm_{arch} {k.name} (picked for m <= 4) spills {k.spill_stores} bytes"
                     for k in small_m_spills(kernels)]
    for failure in failures:
        print(f"FAILED {failure}")
    print("native ptxas check:", "FAILED" if failures else "passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
