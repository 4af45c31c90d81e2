"""The training run: data -> model -> method -> compiled step -> evaluation, checkpoints, logs.

:func:`run` composes the library's pieces for one run folder; ``python -m one_fast.train`` is
its command line. Under ``torchrun --nproc_per_node=K`` each process trains on its own shard of
the training set with ``--batch-size`` images per step (the global batch is K times that),
rank 0 alone writes logs and checkpoints, every rank evaluates rank 0's model and logs the loss
averaged over ranks; under ``torchrun --max-restarts=K`` a restarted worker group continues from
the run folder's checkpoint (:mod:`.start`, which also writes the run's ``run.json``).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from ..config import TrainConfig, config_to_dict, run_dir_of, validate_config
from ..data.loaders import Loader, build_loaders
from ..deploy import loader_input_spec, save_input_spec
from ..engine import distributed
from ..engine.checkpoint import (
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from ..engine.evaluation import Evaluator
from ..engine.metrics import (
    MetricsLogger,
    gpu_telemetry,
    peak_memory_record,
    reset_peak_memory,
)
from ..engine.plot import plot_metrics
from ..engine.progress import EpochProgress, epoch_line
from ..engine.rng import capture_rng_state, restore_rng_state
from ..engine.schedule import kl_weight, learning_rate
from ..engine.step import NonFiniteLossError, TrainStep
from ..methods import Method
from ..models import ARCHS
from ..models.resnet import blocks_per_stage
from . import provenance
from .assembly import (
    build_method,
    build_model,
    describe_model,
    image_size,
    run_costs,
    training_module,
)
from .interrupt import sigint_stops
from .runtime import Runtime, build_optimizer, resolve_runtime
from .start import begin_run, end_run

PROGRESS_EVERY = 25  # steps between the (synchronising) reads of the running loss


class RunStopped(Exception):
    """Training ended early for a reason the user must read (the message says what to do)."""


def make_method(config: TrainConfig, backend: str) -> Method:
    """The run's training method (its loss on ``backend`` for ONE)."""
    return build_method(config, backend)


def _say(dist: distributed.DistInfo, message: str) -> None:
    if dist.is_main:
        print(message, flush=True)


def _summary_table(acc: dict[str, float]) -> str:
    rows = [f"  {name:<10} {100 * value:6.2f}%" for name, value in acc.items()]
    return "\n".join(["test top-1 (last epoch):", *rows])



def run(config: TrainConfig, notes: tuple[str, ...] | list[str] = ()) -> dict[str, object]:
    """Train as configured; returns the last epoch's record (accuracies under "test_acc").

    Args:
        config: the run's settings (validated here).
        notes: lines to print before training (e.g. how --epochs rescaled the schedule).

    Raises:
        RunStopped: interrupted (Ctrl-C) or the checkpoint could not be written; the message
            says which epoch's checkpoint is saved and how to continue.
        ValueError: bad settings, an unusable run folder, or a ``--resume`` that would change
            the run's settings (:class:`~one_fast.runs.resume.ResumeMismatchError`), naming the
            flag.
    """
    validate_config(config)
    if config.arch == "resnet":
        depth = config.depth or ARCHS["resnet"].options["depth"].default
        block = config.block or ARCHS["resnet"].options["block"].default
        try:
            blocks_per_stage(depth, block)
        except ValueError as err:
            raise ValueError(f"--depth {depth} does not fit --block {block}: {err}") from None
    with torch.device("meta"):  # every other arch/method problem, before data is loaded
        build_model(config, num_classes=None)
    if config.tensorboard:
        try:
            import tensorboard  # noqa: F401  (torch.utils.tensorboard needs it)
        except ImportError:
            raise ValueError("--tensorboard needs the tensorboard package: pip install "
                             "tensorboard (or drop --tensorboard)") from None
    dist = distributed.init_distributed(config.device)
    try:
        with sigint_stops(once=True):
            start = begin_run(config, dist, notes)
            if start.record is not None:
                return start.record
            try:
                record = _train(start.config, dist, start.from_epoch, start.provenance)
            except (KeyboardInterrupt, RunStopped) as err:
                interrupted = isinstance(err, KeyboardInterrupt) or str(err).startswith(
                    "interrupted")
                end_run(start, dist, provenance.INTERRUPTED if interrupted
                        else provenance.FAILED, "" if interrupted else str(err))
                raise
            except Exception as err:
                end_run(start, dist, provenance.FAILED, str(err))
                raise
            end_run(start, dist, provenance.FINISHED)
            return record
    finally:
        distributed.shutdown()


def _train(config: TrainConfig, dist: distributed.DistInfo, start_epoch: int,
           record: dict[str, object] | None = None) -> dict[str, object]:
    """Train from ``start_epoch``; ``record`` is rank 0's run.json content, which gains what
    the runtime resolved to."""
    rt = resolve_runtime(config, dist)
    if rt.cpu_threads is not None:
        torch.set_num_threads(rt.cpu_threads)
    torch.backends.cudnn.benchmark = rt.cudnn_benchmark
    if record is not None:
        provenance.record_runtime(config.out_dir, record, {
            "device": str(rt.device), "loss_backend": rt.loss_backend, "compile": rt.compile,
            "cuda_graphs": rt.cuda_graphs, "amp_dtype": str(rt.amp_dtype).removeprefix("torch.")
            if rt.amp_dtype else None, "channels_last": rt.channels_last,
            "cudnn_benchmark": rt.cudnn_benchmark, "cpu_threads": rt.cpu_threads})
    if rt.note:
        _say(dist, rt.note)
    torch.manual_seed(config.seed)
    # Each rank trains on its shard and evaluates its share of the test set (counts summed).
    # ImageNet crops and synthetic images take the arch's input size unless --image-size is
    # given; the other datasets keep theirs (--image-size, if given, must equal it).
    resized = config.dataset in ("imagenet", "synthetic")
    train_loader, test_loader, data = build_loaders(
        config.dataset, config.batch_size, device=rt.device, seed=config.seed,
        data_dir=config.data_dir, download=config.download,
        synthetic_classes=config.synthetic_classes, svhn_extra=config.svhn_extra,
        image_size=image_size(config) if resized else config.image_size,
        rank=dist.rank, world_size=dist.world_size, channels_last=rt.channels_last,
        data_threads=config.data_threads, prefetch=config.prefetch,
        dtype=rt.amp_dtype or torch.float32)
    if dist.is_main:  # what export and predict read instead of reloading the dataset
        save_input_spec(config.out_dir, loader_input_spec(data, test_loader, config.data_dir))
    memory_format = torch.channels_last if rt.channels_last else torch.contiguous_format
    method = make_method(config, rt.loss_backend)
    model = build_model(config, data.num_classes).to(rt.device, memory_format=memory_format)
    if config.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    # What the step runs: the student, or for kd the student with its frozen teacher.
    pair = training_module(config, model, data.num_classes, rt.device)
    teacher = pair.teacher.to(memory_format=memory_format) if pair is not model else None
    costs, costs_line = run_costs(config, data.num_classes, data.image_shape, teacher)

    lr = torch.tensor(learning_rate(0, config.lr, config.lr_milestones, config.lr_decay,
                                    schedule=config.lr_schedule, epochs=config.epochs),
                      device=rt.device)
    optimizer = build_optimizer(config, rt, model, lr)
    run_dir = Path(config.out_dir)
    if config.resume:  # begin_run checked that it continues this config
        state = load_checkpoint(config.resume, map_location=rt.device)
        if int(state["epoch"]) != start_epoch:
            raise CheckpointError(f"checkpoint {config.resume} changed while the run started "
                                  f"(epoch {start_epoch}, now {state['epoch']})")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        for group in optimizer.param_groups:
            group["lr"] = lr  # keep the live device tensor the step reads
        restore_rng_state(state["rng"], rt.device)
        _say(dist, f"resumed from {config.resume} after epoch {start_epoch}")

    train_model: nn.Module = pair
    if dist.distributed:
        train_model = nn.parallel.DistributedDataParallel(
            pair, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
    step = TrainStep(train_model, optimizer, method, lr,
                     amp_dtype=rt.amp_dtype, compile=rt.compile, cuda_graphs=rt.cuda_graphs)
    evaluator = Evaluator(model, method, amp_dtype=rt.amp_dtype, compile=rt.compile,
                          all_reduce=distributed.all_reduce_sum if dist.distributed else None)
    _say(dist, f"one_fast: {config.dataset} ({data.num_train} train / {data.num_test} test, "
               f"{data.num_classes} classes, {data.image_size}px), --method "
               f"{config.method}, {describe_model(config)} m={config.num_branches}, "
               f"{sum(p.numel() for p in model.parameters()):,} params, "
               f"device {rt.device}, world {dist.world_size}, loss {rt.loss_backend}, "
               f"compile {rt.compile}, cuda graphs {rt.cuda_graphs}, amp "
               f"{rt.amp_dtype or 'none'}")
    _say(dist, costs_line)

    record: dict[str, object] = {}
    # The epoch run_dir/checkpoint.pt holds (0: none of this run; a run continued from another
    # folder has none here until its first epoch is saved).
    saved_epoch = start_epoch if config.resume and Path(run_dir_of(config.resume)).resolve() \
        == run_dir.resolve() else 0
    try:
        with MetricsLogger(run_dir, enabled=dist.is_main,
                           tensorboard=config.tensorboard) as logger:
            for epoch in range(start_epoch, config.epochs):
                record = _train_epoch(config, dist, rt, step, train_loader, epoch)
                if epoch == start_epoch:  # this invocation's first record carries the costs
                    record["costs"] = costs
                if (epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs:
                    # Every rank evaluates the model the checkpoint holds: rank 0's BatchNorm
                    # statistics (each rank updated its own from its shard).
                    distributed.broadcast_buffers(model)
                    record["test_acc"] = evaluator(test_loader.eval_batches())
                logger.log(record)
                _say(dist, epoch_line(record, config.epochs))
                if dist.is_main:
                    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                             "epoch": epoch + 1, "step": record["step"],
                             "schedule": {"lr": record["lr"], "kl_weight": record["kl_weight"]},
                             "rng": capture_rng_state(rt.device),
                             "config": config_to_dict(config)}
                    _save(run_dir, state, saved_epoch)
                    saved_epoch = epoch + 1
                distributed.barrier()
    except KeyboardInterrupt:
        _finish(dist, run_dir, None)
        raise RunStopped(f"interrupted: {_saved_phrase(run_dir, saved_epoch, config.epochs)}"
                         ) from None
    _finish(dist, run_dir, record)
    return record


def _saved_phrase(run_dir: Path, saved_epoch: int, epochs: int) -> str:
    """Which checkpoint survives in ``run_dir`` and the command that continues from it."""
    if saved_epoch == 0:
        return ("no epoch finished, so nothing was saved; run the same command again to start "
                f"over (a folder without a checkpoint, like {run_dir}, is replaced)")
    return (f"{run_dir / 'checkpoint.pt'} holds epoch {saved_epoch} of {epochs}; continue "
            f"with: python -m one_fast.train --resume {run_dir}")


def _save(run_dir: Path, state: dict[str, object], saved_epoch: int) -> None:
    """Write the checkpoint; a failed write becomes one line saying what survived."""
    try:
        save_checkpoint(run_dir, state)
    except OSError as err:
        reason = err.strerror or str(err)
        raise RunStopped(
            f"could not write the checkpoint of epoch {state['epoch']} to {run_dir} ({reason}); "
            f"{_saved_phrase(run_dir, saved_epoch, int(state['config']['epochs']))}"
            " once the problem is fixed") from err


def _finish(dist: distributed.DistInfo, run_dir: Path, record: dict[str, object] | None) -> None:
    """Plot what finished (also after an interruption) and print the summary table."""
    if not dist.is_main or not (run_dir / "metrics.jsonl").is_file():
        return
    try:
        plot_metrics(run_dir / "metrics.jsonl", run_dir / "curves.png")
    except ValueError:  # no epoch finished: nothing to plot
        pass
    if record and "test_acc" in record:
        print(_summary_table(record["test_acc"]), flush=True)
    print(f"run folder: {run_dir}", flush=True)


def _train_epoch(config: TrainConfig, dist: distributed.DistInfo, rt: Runtime, step: TrainStep,
                 loader: Loader, epoch: int) -> dict[str, object]:
    lr_value = learning_rate(epoch, config.lr, config.lr_milestones, config.lr_decay,
                             schedule=config.lr_schedule, epochs=config.epochs)
    kl_value = kl_weight(epoch, config.kl_weight, config.rampup)
    step.lr.fill_(lr_value)
    step.kl_weight.fill_(kl_value)
    step.reset_totals()
    reset_peak_memory(rt.device)
    progress = EpochProgress(loader.steps_per_epoch, epoch + 1, total_epochs=config.epochs,
                             enabled=dist.is_main and config.progress)
    start = time.perf_counter()
    images = 0
    with progress:  # closed (the bar's line ended) also when interrupted
        for i, (x, y) in enumerate(loader.epoch_batches(epoch)):
            step(x, y)
            images += y.shape[0]
            loss = None
            if _read_loss_after(i + 1):
                means, _, bad = _read_totals(step, rt.device)
                _stop_if_bad(bad, epoch)
                loss = means["loss"]
            progress.update(y.shape[0], loss)
        means, steps, bad = _read_totals(step, rt.device)  # syncs: the epoch's work is done
        elapsed = time.perf_counter() - start
        progress.close(loss=means["loss"])
    _stop_if_bad(bad, epoch)
    record: dict[str, object] = {
        "epoch": epoch + 1, "step": (epoch + 1) * steps, "lr": lr_value, "kl_weight": kl_value,
        "train": means, "images_per_s": images * dist.world_size / elapsed,
        "epoch_time_s": elapsed, **peak_memory_record(rt.device),
    }
    stats = getattr(loader, "stats", None)  # the ImageNet loader's InputStats of this epoch
    if stats is not None:
        record["step_images_per_s"] = images * dist.world_size / max(elapsed - stats.wait_s,
                                                                     1e-9)
        record["input"] = {"images_per_s": stats.images_per_s * dist.world_size,
                           "wait_fraction": stats.wait_fraction, "build_s": stats.build_s}
    telemetry = gpu_telemetry(rt.device)
    if telemetry:
        record["gpu"] = telemetry
    if rt.cuda_graphs:
        record["cuda_graph_replays"] = step.graph_replays
    return record


def _read_totals(step: TrainStep, device: torch.device) -> tuple[dict[str, float], int, int]:
    """The step's loss terms averaged over every rank, its step count, and the first step with
    a non-finite loss on any rank: every rank reads the same, so a non-finite loss on one stops
    them all at the same step with the same message."""
    means, steps, bad = step.read_totals()
    means, bad = distributed.reduce_totals(means, bad, device)
    return means, steps, bad


def _read_loss_after(steps: int) -> bool:
    """Read the running loss after steps 1, 2, 4, 8, 16, then every PROGRESS_EVERY steps: the
    bar shows a loss from the start, and a long epoch syncs only every PROGRESS_EVERY steps."""
    return steps < PROGRESS_EVERY and steps & (steps - 1) == 0 or steps % PROGRESS_EVERY == 0


def _stop_if_bad(bad_step: int, epoch: int) -> None:
    if bad_step >= 0:
        raise NonFiniteLossError(
            f"non-finite loss at epoch {epoch + 1}, step {bad_step + 1}: training stopped; "
            f"the last good checkpoint (if any) is untouched")


__all__ = ["PROGRESS_EVERY", "RunStopped", "make_method", "run"]
