"""Run a table: every configuration x seed as one ordinary ``python -m one_fast.train`` run.

Layout under ``--out-dir`` (default ``runs/experiments``)::

    <out>/<table>/TABLE.md                                  rewritten after every run
    <out>/<table>/<configuration>/<variant>/seed<k>/        the run folder (--out-dir of the run)
    <out>/<table>/<configuration>/<variant>/seed<k>.log     the trainer's output, every attempt

``variant`` is the precision ("bf16" or "fp32"), plus ``-e<N>`` when ``--epochs N`` overrides
the recipe, so runs that differ in either never share a folder. A run whose metrics end with
the test accuracy of its last epoch is finished and skipped; one with a checkpoint resumes from
it (``--resume``); a folder holding only an unfinished start (no checkpoint) is replaced
(``--overwrite``). A failing run is reported and the others go on.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..engine.metrics import read_metrics
from .locks import RunLock, RunLocked
from .tables import Configuration, Table

TRAIN_MODULE = "one_fast.train"
PRECISIONS = ("auto", "bf16", "none")
FINISHED, RESUME, OVERWRITE, NEW = "finished", "resume", "overwrite", "new"
INTERRUPT_GRACE_S = 60  # how long a Ctrl-C'd trainer may take to stop by itself


@dataclass(frozen=True)
class RunnerOptions:
    """How to run a table.

    Attributes:
        out_dir: the experiments folder; the table's runs go under ``out_dir/<table>``.
        seeds: one run per configuration and seed.
        epochs: overrides the recipe's epochs (None: the dataset preset's).
        data_dir: the trainer's --data-dir (None: the trainer's default).
        precision: "auto" (bf16 on CUDA, none on the CPU: the trainer's default), "bf16" or
            "none" (float32); always passed to the trainer as ``--amp``.
        extra_flags: more trainer flags, appended to every command (they win over the
            table's own, e.g. ``--fused``).
        dry_run: print the commands only.
    """

    out_dir: Path = Path("runs/experiments")
    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: int | None = None
    data_dir: str | None = None
    precision: str = "auto"
    extra_flags: tuple[str, ...] = ()
    dry_run: bool = False


def resolve_precision(precision: str) -> str:
    """The trainer's --amp for ``precision``: "auto" becomes what the trainer itself would use
    on this machine (bf16 with CUDA, none without).

    Raises:
        ValueError: an unknown value, naming --precision.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got "
                         f"{precision!r}")
    if precision == "auto":
        return "bf16" if torch.cuda.is_available() else "none"
    return precision


def precision_label(amp: str) -> str:
    """The table's name for an --amp value: "bf16" (autocast) or "fp32"."""
    return "fp32" if amp == "none" else amp


@dataclass
class PlannedRun:
    """One configuration x seed: where it runs and the command that trains it.

    Attributes:
        config: the table's configuration.
        seed: the run's --seed.
        run_dir: the run folder.
        log_path: where the trainer's output goes.
        command: the training command (``python -m one_fast.train ...``), without the
            ``--resume``/``--overwrite`` its state may add.
        teacher: the planned run of the teacher (kd), if any.
    """

    config: Configuration
    seed: int
    run_dir: Path
    log_path: Path
    command: list[str]
    teacher: PlannedRun | None = None


@dataclass
class Outcome:
    """What became of a run in this invocation.

    Attributes:
        status: "finished", "failed" or "pending" (not run: dry run).
        record: the last metrics record (with "test_acc") of a finished run.
        costs: the cost record the trainer stored in the run's metrics, if any.
        error: why a failed run failed (one line).
        trained: this invocation trained it (False: it was finished already, or failed before
            starting).
        seconds: wall time of this invocation's training of it.
    """

    status: str
    record: dict | None = None
    costs: dict | None = None
    error: str = ""
    trained: bool = False
    seconds: float = 0.0


@dataclass
class TableResult:
    """Every planned run of a table and its outcome, in order."""

    table: Table
    runs: list[PlannedRun]
    outcomes: dict[tuple[str, int], Outcome] = field(default_factory=dict)

    def outcome(self, run: PlannedRun) -> Outcome:
        return self.outcomes.get((run.config.name, run.seed), Outcome("pending"))

    @property
    def trained(self) -> int:
        """Runs this invocation trained (resumed ones included)."""
        return sum(o.trained for o in self.outcomes.values())


def table_dir(table: Table, options: RunnerOptions) -> Path:
    """The folder of a table's runs and of its TABLE.md."""
    return Path(options.out_dir) / table.name


def plan_runs(table: Table, options: RunnerOptions) -> list[PlannedRun]:
    """Every configuration x seed of ``table``, teachers first (the table's order).

    Raises:
        ValueError: no seeds, a negative seed, or a configuration naming an unknown teacher.
    """
    if not options.seeds:
        raise ValueError("--seeds: give at least one seed")
    if any(s < 0 for s in options.seeds):
        raise ValueError(f"--seeds must be >= 0, got {list(options.seeds)}")
    if options.epochs is not None and options.epochs < 1:
        raise ValueError(f"--epochs must be >= 1, got {options.epochs}")
    amp = resolve_precision(options.precision)
    variant = precision_label(amp) + (f"-e{options.epochs}" if options.epochs else "")
    runs: list[PlannedRun] = []
    by_key: dict[tuple[str, int], PlannedRun] = {}
    for config in table.configurations:
        for seed in options.seeds:
            folder = table_dir(table, options) / config.name / variant
            run_dir, log = folder / f"seed{seed}", folder / f"seed{seed}.log"
            teacher = None
            command = [sys.executable, "-m", TRAIN_MODULE, *config.train_flags()]
            if config.teacher is not None:
                teacher = by_key.get((config.teacher, seed))
                if teacher is None:
                    raise ValueError(f"configuration {config.name!r} needs teacher "
                                     f"{config.teacher!r}, which is not planned before it")
                command += ["--teacher", str(teacher.run_dir)]
            if options.data_dir is not None:
                command += ["--data-dir", options.data_dir]
            if options.epochs is not None:
                command += ["--epochs", str(options.epochs)]
            command += ["--seed", str(seed), "--amp", amp, "--out-dir", str(run_dir),
                        "--no-progress", *options.extra_flags]
            run = PlannedRun(config, seed, run_dir, log, command, teacher)
            runs.append(run)
            by_key[(config.name, seed)] = run
    return runs


def shown_command(command: list[str]) -> str:
    """The command as a user would type it (``python`` for the interpreter)."""
    return shlex.join(["python", *command[1:]] if command[0] == sys.executable else command)


def _checkpoint_meta(run_dir: Path) -> dict | None:
    import json

    try:
        return json.loads((run_dir / "checkpoint.json").read_text("utf-8"))
    except (OSError, ValueError):
        return None


def finished_record(run_dir: Path, epochs: int | None = None) -> dict | None:
    """The final metrics record of a finished run, else None.

    Finished: the run's checkpoint holds its last epoch (the ``epochs`` asked for, or the
    run's own configured epochs) and its metrics end with that epoch's test accuracy.
    """
    meta = _checkpoint_meta(run_dir)
    if meta is None or not (run_dir / "metrics.jsonl").is_file():
        return None
    target = epochs if epochs is not None else (meta.get("config") or {}).get("epochs")
    if target is None or meta.get("epoch") != target:
        return None
    try:
        records = read_metrics(run_dir)
    except ValueError:
        return None
    last = next((r for r in reversed(records) if "epoch" in r), None)
    if last is None or last["epoch"] != target or not isinstance(last.get("test_acc"), dict):
        return None
    return last


def stored_costs(run_dir: Path) -> dict | None:
    """The cost record the trainer stored in the run's metrics (key "costs"), if any."""
    try:
        records = read_metrics(run_dir)
    except (OSError, ValueError):
        return None
    return next((r["costs"] for r in records if isinstance(r.get("costs"), dict)), None)


def run_state(run: PlannedRun, epochs: int | None) -> str:
    """finished, resume (a checkpoint exists), overwrite (only an unfinished start) or new."""
    if finished_record(run.run_dir, epochs) is not None:
        return FINISHED
    if (run.run_dir / "checkpoint.pt").is_file():
        return RESUME
    if run.run_dir.is_dir() and any(run.run_dir.iterdir()):
        return OVERWRITE
    return NEW


def command_for(run: PlannedRun, state: str) -> list[str]:
    """The command for a run in ``state``: resume its checkpoint, or replace a dead start."""
    if state == RESUME:
        return [*run.command, "--resume", str(run.run_dir)]
    if state == OVERWRITE:
        return [*run.command, "--overwrite"]
    return list(run.command)


def _trainer_env() -> dict[str, str]:
    """The environment of a training run: this one_fast first on the import path, so the runs
    train with the package that planned them."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def _failure_reason(log_path: Path, start: int, code: int) -> str:
    """The trainer's last ``error:`` line of this attempt (or its last line) and exit code."""
    try:
        with open(log_path, "rb") as f:
            f.seek(start)
            lines = [ln.strip() for ln in f.read().decode("utf-8", "replace").splitlines()]
    except OSError:
        lines = []
    lines = [ln for ln in lines if ln]
    errors = [ln for ln in lines if ln.startswith("error:")]
    last = errors[-1] if errors else (lines[-1] if lines else "no output")
    return f"exit code {code}: {last[:300]}"


def train(command: list[str], log_path: Path,
          extra_env: dict[str, str] | None = None) -> tuple[int, float, str]:
    """Run one training command, its output appended to ``log_path``; ``extra_env`` adds to
    its environment (a launcher's GPU or CPU-thread share).

    Returns:
        (exit code, seconds, failure reason or "").
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        start = log.tell()
        log.write(f"$ {shown_command(command)}\n".encode())
        log.flush()
        began = time.perf_counter()
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL,
                                env={**_trainer_env(), **(extra_env or {})})
        try:
            code = proc.wait()
        except KeyboardInterrupt:
            # Ctrl-C reached the trainer too: let it finish its own shutdown (it keeps its
            # last checkpoint), so starting the runner again resumes the run.
            try:
                proc.wait(timeout=INTERRUPT_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            raise
        seconds = time.perf_counter() - began
    return code, seconds, (_failure_reason(log_path, start, code) if code else "")


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def run_table(table: Table, options: RunnerOptions,
              on_update: Callable[[TableResult], None] | None = None,
              say: Callable[[str], None] = print) -> TableResult:
    """Train every run of ``table`` that is not finished; report after each.

    Args:
        table: the table (possibly restricted with :meth:`Table.only`).
        options: seeds, epochs, precision, folders, extra flags, dry run.
        on_update: called with the results so far after every run (writes TABLE.md).
        say: where progress lines go.

    Returns:
        The :class:`TableResult`.
    """
    runs = plan_runs(table, options)
    result = TableResult(table, runs)
    states = {id(run): run_state(run, options.epochs) for run in runs}
    to_train = sum(state != FINISHED for state in states.values())
    durations: list[float] = []
    for k, run in enumerate(runs, 1):
        state = states[id(run)]
        head = f"[{k}/{len(runs)}] {run.config.name} seed {run.seed}"
        key = (run.config.name, run.seed)
        if state == FINISHED:
            record = finished_record(run.run_dir, options.epochs)
            result.outcomes[key] = Outcome(FINISHED, record, stored_costs(run.run_dir))
            say(f"{head}: finished earlier, skipped ({run.run_dir})")
            continue
        command = command_for(run, state)
        if options.dry_run:
            say(f"{head}: {shown_command(command)}")
            continue
        if run.teacher is not None and result.outcome(run.teacher).status != FINISHED:
            result.outcomes[key] = Outcome(
                "failed", error=f"its teacher run {run.teacher.run_dir} did not finish")
            say(f"{head}: failed: {result.outcomes[key].error}")
            to_train -= 1
            _notify(on_update, result)
            continue
        lock = RunLock(run.run_dir)  # two runners on one table never train a run twice
        try:
            lock.acquire()
        except RunLocked as err:
            say(f"{head}: skipped: {err}")
            to_train -= 1
            continue
        verb = {RESUME: "resuming", OVERWRITE: "restarting (no checkpoint)"}.get(state, "training")
        say(f"{head}: {verb}, log {run.log_path}\n  {shown_command(command)}")
        try:
            code, seconds, reason = train(command, run.log_path)
        finally:
            lock.release()
        record = finished_record(run.run_dir, options.epochs) if code == 0 else None
        if record is None and not reason:
            reason = "the trainer exited without the last epoch's test accuracy in its metrics"
        outcome = Outcome(FINISHED if record else "failed", record,
                          stored_costs(run.run_dir) if record else None, reason, True, seconds)
        result.outcomes[key] = outcome
        durations.append(seconds)
        to_train -= 1
        eta = (f"; ETA {_duration(to_train * sum(durations) / len(durations))} for {to_train} "
               f"more run{'s' if to_train != 1 else ''}") if to_train else ""
        status = "done" if record else f"FAILED ({reason})"
        say(f"{head}: {status} in {_duration(seconds)}{eta}")
        _notify(on_update, result)
    return result


def _notify(on_update, result: TableResult) -> None:
    if on_update is not None:
        on_update(result)


__all__ = ["PRECISIONS", "Outcome", "PlannedRun", "RunnerOptions", "TableResult",
           "command_for", "finished_record", "plan_runs", "precision_label",
           "resolve_precision", "run_state", "run_table", "shown_command", "stored_costs",
           "table_dir", "train"]
