"""The first-GPU-run check: what decides most first, each stage under a cap, all within 9 minutes.

``benchmarks/gpu_check.sh`` runs this (``python -m benchmarks.gpu_check``) inside one device
call on one H100/H200. The stages, in order (:func:`plan`):

1. **preflight**: GPU, driver, every dependency's version (which one is missing);
2. **install**: ``pip install --no-build-isolation --no-deps -e .``, which builds the native
   extension with nvcc; then **native check**: the check *stops* when the ``native`` backend is
   missing on CUDA, printing the build's own message (every later figure would mislead);
3. **precision**: the GPU tests of ``tests/loss`` -- the fused Triton and native kernels against
   the reference loss (bf16 numerics, compiled and graph-captured losses);
4. **epochs**: one CIFAR-shaped ResNet-32 epoch (ONE, m = 3, batch 128, 50,000 synthetic
   images: the GPU machines have no internet for CIFAR itself) per mode -- eager, compiled,
   compiled + CUDA graphs, compiled + CUDA graphs + bf16 -- each after a warm-up epoch that
   pays for compilation; images/s of both epochs go to ``epochs.jsonl``;
5. **benchmarks**: the loss suite (Triton vs native vs reference vs compiled reference, per
   shape) and the step suite, which fill BENCHMARKS.md's GPU tables;
6. **remaining GPU tests**: ``pytest -m gpu tests/`` outside ``tests/loss``;
7. **other benchmarks**: every other suite, in whatever time the stages before left unused.

Caps: a stage may run until the caps of it and every stage before it are spent (time a stage
leaves unused goes to the next), and never past the budget (``GPU_CHECK_SECONDS``, default
:data:`BUDGET_S`); it is stopped with SIGINT (pytest then still writes its reports), then
killed. The caps sum to at most the budget (tests/test_gpu_check.py checks it).

Results, written as they happen, in one folder ``DIR/<date>-<gpu>/`` (DIR: ``--out``, else
``$OUT``, else ``benchmarks/results``): ``check.log`` (everything), ``<stage>.log`` per stage,
``stages.json`` (every stage's cap, limit, outcome, exit status and time, rewritten after each
stage, with its JUnit counts where it ran pytest), ``preflight.json``, ``<stage>.xml`` (JUnit),
``loss-bench.json`` / ``step-bench.json`` / ``other-bench.json`` (pytest-benchmark),
``bench.jsonl`` (one line per benchmark case as it finishes), ``epochs.jsonl`` and
``epochs/<mode>/metrics.jsonl``, and ``summary.md`` (the benchmark tables and the stages). A run
cut short keeps everything that finished before.

``--dry-run`` prints the plan with each stage's cap and the total against the budget, and runs
nothing (no GPU needed; exit 1 if the caps exceed the budget). Without a CUDA device the check
refuses to run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import select
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = 540  # 9 minutes: a 600-second device call less start-up and copies
KILL_GRACE_S = 10  # after SIGINT, before SIGKILL
PY = sys.executable

# One CIFAR-shaped ONE ResNet-32 run per mode: the recipe's network and batch on the synthetic
# CIFAR-100-shaped set; 2 epochs so that the second is measured after compilation.
EPOCH_FLAGS = ("--dataset", "synthetic", "--arch", "resnet", "--depth", "32",
               "--num-branches", "3", "--batch-size", "128", "--epochs", "2", "--eval-every",
               "2", "--fused", "--no-progress", "--overwrite", "--device", "cuda")
EPOCH_MODES = {
    "eager": ("--no-compile", "--no-cuda-graphs", "--amp", "none"),
    "compiled": ("--compile", "--no-cuda-graphs", "--amp", "none"),
    "compiled+graphs": ("--compile", "--cuda-graphs", "--amp", "none"),
    "bf16": ("--compile", "--cuda-graphs", "--amp", "bf16"),
}


@dataclass(frozen=True)
class Stage:
    """One step of the check.

    Attributes:
        name: what it is called in the plan, logs and stages.json.
        cap_s: its own share of the budget (0: only time earlier stages left unused).
        argv: the command, run from the repository root.
        what: one line for the plan.
        junit: the JUnit file it writes (its counts go into stages.json).
        fatal: when it fails, the check stops (the stages after it would mislead).
        collect: called with the results folder after the stage ends (finished or not);
            returns what to add to its stages.json record.
    """

    name: str
    cap_s: int
    argv: tuple[str, ...]
    what: str
    junit: str | None = None
    fatal: bool = False
    collect: Callable[[Path], dict] | None = field(default=None, compare=False)

    @property
    def slug(self) -> str:
        """The stage's name as a file name."""
        return self.name.replace(" ", "-").replace("+", "-")


def _pytest(junit: Path, *args: str) -> tuple[str, ...]:
    return (PY, "-m", "pytest", "-q", "-ra", "-p", "no:cacheprovider", "--log-level=WARNING",
            "--continue-on-collection-errors", f"--junitxml={junit}", *args)


def _bench(folder: Path, name: str, *args: str) -> tuple[str, ...]:
    return _pytest(folder / f"{name}.xml", *args, "--benchmark-only",
                   "--benchmark-columns=median,rounds",
                   f"--benchmark-json={folder / f'{name}.json'}")


def plan(folder: Path, install: bool = True) -> list[Stage]:
    """The check's stages, in order, writing into ``folder``."""
    stages = [Stage("preflight", 20, (PY, "-m", "benchmarks.gpu_check", "--preflight",
                                      str(folder)),
                    "GPU, driver and every dependency's version", fatal=True)]
    if install:
        stages.append(Stage("install", 100, (PY, "-m", "pip", "install", "--no-build-isolation",
                                             "--no-deps", "-e", "."),
                            "pip install -e . (builds the native extension with nvcc)"))
    stages.append(Stage("native check", 10, (PY, "-m", "benchmarks.gpu_check", "--native-check",
                                             str(folder)),
                        "stop unless the native backend runs on CUDA", fatal=True))
    stages.append(Stage("precision", 90, _pytest(folder / "precision.xml", "-m", "gpu",
                                                  "tests/loss"),
                        "fused Triton/native kernels vs the reference on the GPU",
                        junit="precision.xml"))
    for mode, flags in EPOCH_MODES.items():
        stages.append(Stage(f"epoch {mode}", 40,
                            (PY, "-m", "one_fast.train", *EPOCH_FLAGS, *flags, "--out-dir",
                             str(folder / "epochs" / mode)),
                            f"CIFAR-shaped ResNet-32, warm-up + 1 epoch, {mode}",
                            collect=_epoch_collector(mode)))
    stages += [
        Stage("loss benchmarks", 50, _bench(folder, "loss-bench",
                                            "benchmarks/test_loss_bench.py"),
              "loss: Triton vs native vs reference vs compiled reference", junit="loss-bench.xml"),
        Stage("step benchmarks", 60, _bench(folder, "step-bench",
                                            "benchmarks/test_step_bench.py"),
              "training step variants, images/s", junit="step-bench.xml"),
        Stage("remaining GPU tests", 50, _pytest(folder / "gpu-tests.xml", "-m", "gpu", "tests",
                                                 "--ignore=tests/loss"),
              "every other GPU-marked test", junit="gpu-tests.xml"),
        Stage("other benchmarks", 0, _bench(folder, "other-bench", "benchmarks",
                                            "--ignore=benchmarks/test_loss_bench.py",
                                            "--ignore=benchmarks/test_step_bench.py"),
              "every other suite, in time left unused", junit="other-bench.xml"),
    ]
    return stages


def _epoch_collector(mode: str) -> Callable[[Path], dict]:
    def collect(folder: Path) -> dict:
        run_dir = folder / "epochs" / mode
        records = _read_jsonl(run_dir / "metrics.jsonl")
        (run_dir / "checkpoint.pt").unlink(missing_ok=True)  # megabytes nobody needs back
        line = {"mode": mode, "epochs_finished": len(records)}
        for key, record in zip(("warmup_epoch", "measured_epoch"), records, strict=False):
            line[key] = {k: record.get(k) for k in ("images_per_s", "epoch_time_s",
                                                    "cuda_graph_replays", "peak_memory_mb")}
        _append_jsonl(folder / "epochs.jsonl", line)
        return line

    return collect


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _append_jsonl(path: Path, record: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def write_json(path: Path, data: object) -> None:
    """Write ``data`` as JSON atomically (a run cut off mid-write leaves the previous file)."""
    from one_fast.files import atomic_write

    atomic_write(path, lambda f: f.write(json.dumps(data, indent=1).encode()))


def junit_counts(path: Path) -> dict[str, object]:
    """Tests, failures, errors, skipped and the failed test ids of a JUnit report."""
    if not path.is_file():
        return {}
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        return {"junit_error": str(exc)}
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {key: sum(int(s.get(key, 0)) for s in suites)
              for key in ("tests", "failures", "errors", "skipped")}
    counts["failed"] = [f"{case.get('classname')}::{case.get('name')}"
                        for case in root.iter("testcase")
                        if case.find("failure") is not None or case.find("error") is not None]
    return counts


def print_plan(stages: list[Stage], budget_s: int) -> None:
    """The plan: each stage's cap, what it runs, and the total against the budget."""
    total = sum(s.cap_s for s in stages)
    print(f"gpu_check plan (budget {budget_s} s; caps sum to {total} s):")
    for i, s in enumerate(stages, 1):
        cap = f"{s.cap_s:>4} s" if s.cap_s else " left"
        stops = "  [stops the check on failure]" if s.fatal else ""
        print(f"  {i:>2}. {s.name:<22} {cap}  {s.what}{stops}")
        print(f"      $ {' '.join(a if a != PY else 'python' for a in s.argv)}")
    verdict = "fits" if total <= budget_s else "EXCEEDS"
    print(f"total of the caps: {total} s = {total / 60:.1f} min, {verdict} the {budget_s} s budget")


class Log:
    """Output to the console and to check.log."""

    def __init__(self, path: Path) -> None:
        self.file = path.open("ab", buffering=0)

    def __call__(self, line: str = "") -> None:
        self.write_bytes((line + "\n").encode())

    def write_bytes(self, data: bytes) -> None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        self.file.write(data)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_stage(stage: Stage, limit_s: float, log: Log, stage_log: Path) -> tuple[int, bool]:
    """Run one stage under ``limit_s`` seconds (SIGINT, then SIGKILL); returns (exit status,
    whether it ran out of time). Its output goes to the console, check.log and ``stage_log``."""
    # SIGINT restored in the child: the check stops a stage with it, and a shell that ignores
    # SIGINT (`nohup ... &`) would otherwise pass that on, leaving only the SIGKILL.
    proc = subprocess.Popen(stage.argv, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=_default_sigint)
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + limit_s
    timed_out = False
    with stage_log.open("wb") as out:
        while True:
            readable, _, _ = select.select([fd], [], [], 0.1)
            chunk = os.read(fd, 1 << 16) if readable else b""
            if readable and not chunk:  # end of output: the process is exiting
                break
            if not readable and proc.poll() is not None:
                break  # exited; a leftover child (a compile worker) may still hold the pipe
            if chunk:
                out.write(chunk)
                log.write_bytes(chunk)
            now = time.monotonic()
            if not timed_out and now > deadline:
                timed_out = True
                os.killpg(proc.pid, signal.SIGINT)  # pytest still writes its reports
                deadline = now + KILL_GRACE_S
            elif timed_out and now > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                deadline = float("inf")
    proc.stdout.close()
    rc = proc.wait()
    try:  # whatever the stage left behind would compete with the next one
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return rc, timed_out


def run_plan(stages: list[Stage], folder: Path, budget_s: float, log: Log) -> bool:
    """Run the stages in order within ``budget_s``; stages.json after each. True if all ok."""
    start = time.monotonic()
    records: list[dict] = []
    caps_so_far = 0.0
    ok = True
    for stage in stages:
        caps_so_far += stage.cap_s
        elapsed = time.monotonic() - start
        limit = min(caps_so_far - elapsed, budget_s - elapsed)
        record = {"stage": stage.name, "cap_s": stage.cap_s, "limit_s": round(limit, 1)}
        if limit < 1:
            record.update(outcome="SKIPPED (no time left)")
            log(f"=== [{stage.name}] skipped: no time left")
            records.append(record)
            write_json(folder / "stages.json", records)
            continue
        log(f"\n=== [{stage.name}] (limit {limit:.0f} s): "
            f"{' '.join(stage.argv)}")
        began = time.monotonic()
        rc, timed_out = run_stage(stage, limit, log, folder / f"{stage.slug}.log")
        # pytest's 5 is "no tests collected": a pytest stage that found nothing says so.
        outcome = ("TIMED OUT" if timed_out else "ok" if rc == 0
                   else "ok (nothing collected)" if rc == 5 and stage.junit else "FAILED")
        record.update(outcome=outcome, exit=rc, seconds=round(time.monotonic() - began, 1))
        if stage.junit:
            record.update(junit_counts(folder / stage.junit))
        if stage.collect is not None:
            try:
                record["results"] = stage.collect(folder)
            except (OSError, ValueError) as exc:  # a half-written file of a stopped stage
                record["results_error"] = f"{type(exc).__name__}: {exc}"
        ok = ok and outcome == "ok"
        records.append(record)
        write_json(folder / "stages.json", records)
        log(f"=== [{stage.name}] {outcome} (exit {rc}, {record['seconds']} s)")
        if stage.fatal and outcome != "ok":
            log(f"=== stopping: stage {stage.name!r} failed and the stages after it would "
                f"mislead")
            return False
    return ok


def preflight(folder: Path) -> int:
    """Print and record the environment; exit 1 when a needed dependency or CUDA is missing."""
    import importlib
    import importlib.metadata as md
    import platform

    deps = [("torch", "torch", True), ("triton", "triton", True), ("numpy", "numpy", True),
            ("tqdm", "tqdm", True), ("scikit-learn", "sklearn", True),
            ("matplotlib", "matplotlib", True), ("pytest", "pytest", True),
            ("pytest-benchmark", "pytest_benchmark", True), ("hypothesis", "hypothesis", True),
            ("nvidia-ml-py", "pynvml", False), ("nvidia-dali-cuda130", "nvidia.dali", False)]
    info: dict[str, object] = {"python": platform.python_version(), "versions": {},
                               "missing": []}
    print(f"python {info['python']}")
    for dist, module, needed in deps:
        try:
            importlib.import_module(module)
            info["versions"][dist] = md.version(dist)
            print(f"  {dist:<20} {md.version(dist)}")
        except Exception as exc:  # ImportError, or a broken install failing another way
            print(f"  {dist:<20} MISSING ({type(exc).__name__}: {exc})"
                  + ("" if needed else " -- optional"))
            if needed:
                info["missing"].append(dist)
    import torch

    info["cuda"] = torch.version.cuda
    info["cuda_available"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info["device"] = {"name": p.name, "sms": p.multi_processor_count,
                          "memory_gib": round(p.total_memory / 2**30, 1),
                          "capability": f"{p.major}.{p.minor}"}
        print(f"device 0: {p.name}, {p.multi_processor_count} SMs, "
              f"{p.total_memory / 2**30:.1f} GiB, sm_{p.major}{p.minor}")
    try:
        smi = subprocess.run(["nvidia-smi", "--format=csv,noheader", "--query-gpu=name,"
                              "driver_version,clocks.sm,clocks.max.sm,memory.total,power.limit"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
        info["nvidia_smi"] = smi.strip()
        print(f"nvidia-smi: {smi.strip()}")
    except (OSError, subprocess.SubprocessError) as exc:
        info["nvidia_smi"] = f"unavailable: {exc}"
    write_json(folder / "preflight.json", info)
    if info["missing"] or not info["cuda_available"]:
        print(f"preflight: missing {info['missing'] or 'a CUDA device'}")
        return 1
    print("preflight: every dependency imports; CUDA is available")
    return 0


def native_check(folder: Path) -> int:
    """Exit 1, with the build's own messages, unless the native backend runs on CUDA."""
    from one_fast.loss import native, unavailable_reason

    reason = unavailable_reason("native", "cuda")
    write_json(folder / "native.json", {"built": native.BUILT, "cpu": native.HAS_CPU,
                                        "cuda": native.HAS_CUDA, "reason": reason})
    if reason is None:
        print("native backend: built with its CUDA kernel")
        return 0
    print(f"native backend missing on CUDA: {reason}")
    install_log = folder / "install.log"
    if install_log.is_file():
        lines = [line for line in install_log.read_text(errors="replace").splitlines()
                 if "one_fast" in line or "error" in line.lower()]
        print("the build said:\n" + "\n".join(f"  {line}" for line in lines[-20:]))
    return 1


def summary(folder: Path) -> None:
    """summary.md: the benchmark tables (benchmarks/summarize.py) and the stages."""
    inputs = [p for p in (folder / "loss-bench.json", folder / "step-bench.json",
                          folder / "other-bench.json", folder / "bench.jsonl") if p.is_file()]
    text = "No benchmark results were recorded.\n"
    if inputs:
        out = subprocess.run([PY, "benchmarks/summarize.py", *map(str, inputs)], cwd=ROOT,
                             capture_output=True, text=True)
        text = out.stdout if out.returncode == 0 else f"summarize.py failed: {out.stderr}\n"
    rows = ["| stage | outcome | exit | time |", "|---|---|---:|---:|"]
    stages = json.loads((folder / "stages.json").read_text()) if (
        folder / "stages.json").is_file() else []
    rows += [f"| {r['stage']} | {r['outcome']} | {r.get('exit', '–')} | "
             f"{r.get('seconds', 0)} s |" for r in stages]
    epochs = _read_jsonl(folder / "epochs.jsonl")
    lines = ["| mode | warm-up epoch images/s | measured epoch images/s |", "|---|---:|---:|"]
    lines += [f"| {e['mode']} | {_ips(e.get('warmup_epoch'))} | {_ips(e.get('measured_epoch'))} |"
              for e in epochs]
    (folder / "summary.md").write_text(text + "\n### Epochs (ResNet-32, CIFAR-shaped)\n\n"
                                       + "\n".join(lines) + "\n\n### Stages\n\n"
                                       + "\n".join(rows) + "\n")


def _ips(epoch: dict | None) -> str:
    return f"{epoch['images_per_s']:.0f}" if epoch and epoch.get("images_per_s") else "–"


def results_folder(out: Path, slug: str) -> Path:
    """``out/<date>-<slug>``, with the time appended when that folder exists."""
    base = out / f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d}-{slug}"
    if base.exists():
        base = base.with_name(f"{base.name}-{dt.datetime.now(dt.timezone.utc):%H%M%S}")
    base.mkdir(parents=True)
    return base


def gpu_slug() -> str | None:
    """The first GPU's name as a file-name slug, or None without a usable CUDA device."""
    import torch

    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(0).lower()
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in name).strip("-")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    parser.add_argument("--no-install", action="store_true",
                        help="use the environment as it is (no pip install -e .)")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get(
        "OUT", ROOT / "benchmarks" / "results")), help="where the results folder goes")
    parser.add_argument("--preflight", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--native-check", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.preflight:
        return preflight(args.preflight)
    if args.native_check:
        return native_check(args.native_check)
    budget = int(os.environ.get("GPU_CHECK_SECONDS", BUDGET_S))
    if args.dry_run:
        stages = plan(Path("RESULTS"), not args.no_install)
        print_plan(stages, budget)
        return 0 if sum(s.cap_s for s in stages) <= budget else 1
    slug = gpu_slug()
    if slug is None:
        print("gpu_check: no CUDA device here; nothing to check (--dry-run prints the plan)",
              file=sys.stderr)
        return 2
    folder = results_folder(args.out, slug)
    log = Log(folder / "check.log")
    commit = os.environ.get("ONE_FAST_COMMIT") or _git_commit()
    os.environ["ONE_FAST_COMMIT"] = commit
    os.environ["ONE_FAST_BENCH_LOG"] = str(folder / "bench.jsonl")
    os.environ.setdefault("ONE_FAST_BENCH_SECONDS", "0.5")
    if args.no_install:
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT),
                                                                 os.environ.get("PYTHONPATH")]))
    stages = plan(folder, not args.no_install)
    log(f"=== one_fast gpu_check: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M:%S} UTC, "
        f"commit {commit}, results in {folder}")
    ok = run_plan(stages, folder, budget, log)
    summary(folder)
    log((folder / "summary.md").read_text())
    return 0 if ok else 1


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT,
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
