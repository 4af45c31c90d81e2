"""Run a table: every configuration x seed as one ordinary ``python -m one_fast.train`` run.

Layout under ``--out-dir`` (default ``runs/experiments``)::

    <out>/<table>/TABLE.md                                  rewritten after every run
    <out>/<table>/<configuration>/<variant>/seed<k>/        the run folder (--out-dir of the run)
    <out>/<table>/<configuration>/<variant>/seed<k>.log     the trainer's output, every attempt

``variant`` is the precision ("bf16" or "fp32"), plus ``-e<N>`` when ``--epochs N`` overrides
the recipe, so runs that differ in either never share a folder. Each run folder is judged by
:func:`one_fast.runs.status.classify_run` against the plan's resolved config: a finished run
of that config is skipped; a partial one resumes from its checkpoint (``--resume``) or, without
one, starts afresh; a stale one (another config, or no provenance) and an unreadable one are
never counted nor continued -- they are reported, and ``--rerun-stale`` replaces them
(``--overwrite``). A failing run is reported and the others go on.
"""

from __future__ import annotations

import contextlib
import io
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..cli.train_flags import parse_flags
from ..config import TrainConfig, config_from_flags
from ..engine.metrics import read_metrics
from ..runs.provenance import commits
from ..runs.status import FAILED, FINISHED, MISSING, STALE, RunState, classify_run
from .locks import RunLock, RunLocked
from .tables import Configuration, Table

TRAIN_MODULE = "one_fast.train"
PRECISIONS = ("auto", "bf16", "none")
INTERRUPT_GRACE_S = 60  # how long a Ctrl-C'd trainer may take to stop by itself


class RunInterrupted(Exception):
    """The runner was interrupted while a trainer ran; the message says what became of it."""


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
        rerun_stale: replace stale and unreadable runs (``--overwrite``) instead of reporting
            them.
    """

    out_dir: Path = Path("runs/experiments")
    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: int | None = None
    data_dir: str | None = None
    precision: str = "auto"
    extra_flags: tuple[str, ...] = ()
    dry_run: bool = False
    rerun_stale: bool = False


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
        planned: the trainer's config that ``command`` resolves to (None: the command is
            refused by the trainer, which then says why).
    """

    config: Configuration
    seed: int
    run_dir: Path
    log_path: Path
    command: list[str]
    teacher: PlannedRun | None = None
    planned: TrainConfig | None = None


@dataclass
class Outcome:
    """What became of a run in this invocation.

    Attributes:
        status: "finished", "failed", "stale" (not counted: another config, or no provenance)
            or "pending" (not run: dry run).
        record: the last metrics record (with "test_acc") of a finished run.
        costs: the cost record the trainer stored in the run's metrics, if any.
        error: why a failed run failed, or why a stale one is stale (one line).
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
    commits: tuple[str, ...] = ()


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
            run = PlannedRun(config, seed, run_dir, log, command, teacher,
                             planned_config(command))
            runs.append(run)
            by_key[(config.name, seed)] = run
    return runs


def shown_command(command: list[str]) -> str:
    """The command as a user would type it (``python`` for the interpreter)."""
    return shlex.join(["python", *command[1:]] if command[0] == sys.executable else command)


def planned_config(command: list[str]) -> TrainConfig | None:
    """The config the trainer resolves ``command``'s flags to, or None where it refuses them
    (the trainer's own run then reports why)."""
    flags = command[command.index(TRAIN_MODULE) + 1:]
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # argparse's usage text on bad flags
            return config_from_flags(parse_flags(flags))[0]
    except (ValueError, SystemExit):
        return None


def stored_costs(run_dir: Path) -> dict | None:
    """The cost record the trainer stored in the run's metrics (key "costs"), if any."""
    try:
        records = read_metrics(run_dir)
    except (OSError, ValueError):
        return None
    return next((r["costs"] for r in records if isinstance(r.get("costs"), dict)), None)


def run_state(run: PlannedRun) -> RunState:
    """The run folder's state against the plan (:func:`one_fast.runs.status.classify_run`)."""
    if run.planned is None:
        return RunState(MISSING, "the trainer refuses this configuration's flags")
    return classify_run(run.run_dir, run.planned)


def command_for(run: PlannedRun, state: RunState, rerun_stale: bool = False
                ) -> list[str] | None:
    """The command for a run in ``state``: resume its checkpoint, start it (a folder without a
    checkpoint is replaced by the trainer itself), replace it (``rerun_stale``), or None: a
    finished run, and a stale or unreadable one that is not to be replaced."""
    if state.state == FINISHED:
        return None
    if state.state == STALE or not state.readable:
        return [*run.command, "--overwrite"] if rerun_stale else None
    if state.resumable:
        return [*run.command, "--resume", str(run.run_dir)]
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
            killed = stop_trainer(proc)
            raise RunInterrupted(f"exit code {proc.returncode}" + (
                f" (it had not stopped {INTERRUPT_GRACE_S} s after the interrupt and was "
                "killed)" if killed else "")) from None
        seconds = time.perf_counter() - began
    return code, seconds, (_failure_reason(log_path, start, code) if code else "")


def stop_trainer(proc: subprocess.Popen) -> bool:
    """Pass an interrupt on to the trainer and wait for its clean stop (it keeps its last
    checkpoint); True when it had to be killed (no stop within ``INTERRUPT_GRACE_S``, or a
    second Ctrl-C).

    A Ctrl-C at a terminal reaches the trainer by itself, but a ``kill -INT`` of the runner
    alone does not: forward it either way (the trainer ignores a repeat while it stops).
    """
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=INTERRUPT_GRACE_S)
        return False
    except (subprocess.TimeoutExpired, KeyboardInterrupt):
        proc.kill()
        proc.wait()
        return True


def interrupted_message(run: PlannedRun, how: str) -> str:
    """What became of the run a trainer was training when the runner was interrupted."""
    state = run_state(run)
    head = f"interrupted: {run.config.name} seed {run.seed} ({how})"
    if state.state == FINISHED:
        what = "had finished all its epochs before it stopped; it counts as finished"
    elif state.epoch:
        what = (f"keeps its checkpoint of epoch {state.epoch} of {run.planned.epochs}"
                if run.planned else f"keeps its checkpoint of epoch {state.epoch}")
    else:
        what = "stopped before its first epoch finished (nothing of it is kept)"
    return (f"{head} {what}; finished runs are kept: run the same command again to "
            "continue")


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
    states = {id(run): run_state(run) for run in runs}
    commands = {id(run): command_for(run, states[id(run)], options.rerun_stale) for run in runs}
    to_train = sum(command is not None for command in commands.values())
    durations: list[float] = []
    for k, run in enumerate(runs, 1):
        state, command = states[id(run)], commands[id(run)]
        head = f"[{k}/{len(runs)}] {run.config.name} seed {run.seed}"
        key = (run.config.name, run.seed)
        if command is None:
            result.outcomes[key] = held_outcome(run, state)
            say(f"{head}: {_held_line(state)} ({run.run_dir})")
            continue
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
        # Read the folder again under the lock: another runner may have trained it meanwhile.
        state = run_state(run)
        command = command_for(run, state, options.rerun_stale)
        if command is None:
            lock.release()
            result.outcomes[key] = held_outcome(run, state)
            say(f"{head}: {_held_line(state)} ({run.run_dir})")
            to_train -= 1
            _notify(on_update, result)
            continue
        say(f"{head}: {_verb(state, command)}, log {run.log_path}\n  {shown_command(command)}")
        try:
            code, seconds, reason = train(command, run.log_path)
        except RunInterrupted as err:
            raise RunInterrupted(interrupted_message(run, str(err))) from None
        finally:
            lock.release()
        after = run_state(run)
        finished = code == 0 and after.state == FINISHED
        if not finished and not reason:
            reason = f"the trainer exited but the run is {after.state}: {after.detail}"
        result.outcomes[key] = Outcome(
            FINISHED if finished else "failed", after.record if finished else None,
            stored_costs(run.run_dir) if finished else None, reason, True, seconds,
            tuple(commits(after.provenance)))
        durations.append(seconds)
        to_train -= 1
        eta = (f"; ETA {_duration(to_train * sum(durations) / len(durations))} for {to_train} "
               f"more run{'s' if to_train != 1 else ''}") if to_train else ""
        status = "done" if finished else f"FAILED ({reason})"
        say(f"{head}: {status} in {_duration(seconds)}{eta}")
        _notify(on_update, result)
    return result


def held_outcome(run: PlannedRun, state: RunState) -> Outcome:
    """The outcome of a run this invocation does not train."""
    if state.state == FINISHED:
        return Outcome(FINISHED, state.record, stored_costs(run.run_dir),
                       commits=tuple(commits(state.provenance)))
    return Outcome(STALE if state.state == STALE else FAILED, error=state.detail)


def _held_line(state: RunState) -> str:
    if state.state == FINISHED:
        return "finished earlier, skipped"
    what = "stale" if state.state == STALE else "not counted"
    return f"{what}: {state.detail}; --rerun-stale replaces it"


def _verb(state: RunState, command: list[str]) -> str:
    if command[-1] == "--overwrite":
        return f"replacing the {state.state} run"
    if state.resumable:
        return f"resuming after epoch {state.epoch}"
    return "restarting (no checkpoint)" if state.state != MISSING else "training"


def _notify(on_update, result: TableResult) -> None:
    if on_update is not None:
        on_update(result)


__all__ = ["PRECISIONS", "Outcome", "PlannedRun", "RunInterrupted", "RunnerOptions",
           "TableResult", "command_for", "held_outcome", "interrupted_message", "plan_runs",
           "planned_config", "precision_label", "resolve_precision", "run_state", "run_table",
           "shown_command", "stop_trainer", "stored_costs", "table_dir", "train"]
