"""``python -m one_fast.train``: configure, then compose data -> model -> loss -> step -> logs.

See ``python -m one_fast.train --help`` for every flag, and the README for the CIFAR recipe.
Under ``torchrun --nproc_per_node=K`` each process trains on its own shard of the training set
with ``--batch-size`` images per step (the global batch is K times that) and rank 0 alone writes
logs and checkpoints.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .config import (
    INVOCATION_FIELDS,
    MODEL_FIELDS,
    TrainConfig,
    config_from_flags,
    config_to_dict,
    parse_flags,
    validate_config,
)
from .data.loaders import Loader, build_loaders
from .deploy import loader_input_spec, save_input_spec
from .engine import distributed
from .engine.checkpoint import CheckpointError, check_config, load_checkpoint, save_checkpoint
from .engine.costs import inference_flops, model_costs
from .engine.evaluate import Evaluator
from .engine.metrics import MetricsLogger, gpu_telemetry, peak_memory_record, reset_peak_memory
from .engine.model_setup import (
    autocast_dtype,
    build_method,
    build_model,
    describe_model,
    image_size,
    training_module,
)
from .engine.plot import plot_metrics
from .engine.progress import EpochProgress, epoch_line
from .engine.rng import capture_rng_state, restore_rng_state
from .engine.run_folder import prepare_run_folder
from .engine.schedule import kl_weight, learning_rate
from .engine.step import NonFiniteLossError, TrainStep
from .loss import FUSED_MAX_TEMPERATURE, available_backends, native
from .methods import DEFAULT_TEMPERATURE, Method
from .models import ARCHS
from .models.resnet import blocks_per_stage

PROGRESS_EVERY = 25  # steps between the (synchronising) reads of the running loss
# How to get the native kernel when it is missing (said by --fused, and by setup.py at build).
NATIVE_BUILD_HINT = ("build it with `pip install --no-build-isolation -e .` (torch installed "
                     "first, and a C++ compiler)")


class RunStopped(Exception):
    """Training ended early for a reason the user must read (the message says what to do)."""


@dataclass(frozen=True)
class Runtime:
    """The config's "auto" choices resolved for this machine."""

    device: torch.device
    compile: bool
    cuda_graphs: bool
    amp_dtype: torch.dtype | None
    channels_last: bool
    loss_backend: str
    note: str  # one line saying what --fused resolved to, when it had to fall back


def resolve_runtime(config: TrainConfig, dist: distributed.DistInfo) -> Runtime:
    """Turn the config's defaults ("on for CUDA") into concrete choices; clear errors."""
    cuda = dist.device.type == "cuda"
    amp_dtype = autocast_dtype(config, dist.device)
    graphs = config.cuda_graphs
    if graphs is None:
        graphs = cuda and not dist.distributed
    if graphs and not cuda:
        raise ValueError("--cuda-graphs needs a CUDA device (this run is on the CPU)")
    if graphs and dist.distributed:
        raise ValueError("--cuda-graphs is not supported together with DDP; use --no-cuda-graphs")
    if config.sync_bn and not cuda:
        raise ValueError("--sync-bn needs CUDA devices (NCCL)")
    backend, note = ("reference", "")
    if config.fused and config.method != "one":
        note = (f"--fused: the fused kernels compute the ONE loss; --method {config.method} "
                "uses its reference PyTorch loss")
    elif config.fused:
        backend, note = _fused_backend(config, dist.device)
    return Runtime(
        device=dist.device,
        compile=config.compile if config.compile is not None else cuda,
        cuda_graphs=graphs,
        amp_dtype=amp_dtype,
        channels_last=config.channels_last if config.channels_last is not None else cuda,
        loss_backend=backend,
        note=note,
    )


def native_unavailable_reason() -> str:
    """Why the native kernel cannot run on the CPU here, and how to get it."""
    err = native.LOAD_ERROR
    if isinstance(err, ModuleNotFoundError) or err is None:
        return ("the native extension one_fast._native was not built (pip builds in an "
                "isolated environment without torch unless given --no-build-isolation); "
                + NATIVE_BUILD_HINT)
    return f"the native extension does not load ({err}); re" + NATIVE_BUILD_HINT[1:]


def _fused_backend(config: TrainConfig, device: torch.device) -> tuple[str, str]:
    """The fused backend --fused runs on ``device``, and a note when it is not the CUDA kernel."""
    m = config.num_branches
    temperature = DEFAULT_TEMPERATURE["one"] if config.temperature is None else config.temperature
    if temperature > FUSED_MAX_TEMPERATURE:
        return "reference", (f"--fused: the fused kernels are not accurate in float32 at "
                             f"--temperature above {FUSED_MAX_TEMPERATURE:g}; using the "
                             "reference loss (cancellation-free KL)")
    fused = [name for name in available_backends(device) if name != "reference"]
    fits = [name for name in fused if name != "native" or m <= native.MAX_BRANCHES]
    too_many = (f"the native kernel takes at most {native.MAX_BRANCHES} branches, "
                f"--num-branches is {m}")
    if device.type == "cuda":
        if fits:
            return fits[0], ""
        why = too_many if fused else "no fused kernel is available for CUDA here"
        return "reference", f"--fused: {why}; using the reference PyTorch loss"
    if "triton" in fits:  # the CPU, with TRITON_INTERPRET=1
        return "triton", ("--fused: no CUDA device; running the Triton kernel through the "
                          "interpreter (TRITON_INTERPRET=1)")
    if "native" in fits:
        return "native", "--fused: no CUDA device; using the native C++ CPU kernel"
    why = too_many if "native" in fused else native_unavailable_reason()
    return "reference", f"--fused: no fused kernel can run here: {why}; using the reference loss"


def build_optimizer(config: TrainConfig, rt: Runtime, model: nn.Module,
                    lr: torch.Tensor) -> torch.optim.SGD:
    """SGD with the run's settings and the learning rate as a device tensor.

    Eager CUDA steps use the fused single-kernel update; a compiled step traces the foreach one
    (the compiler fuses it itself), as does the CPU.
    """
    fused = rt.device.type == "cuda" and not rt.compile
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=config.momentum,
                           nesterov=config.nesterov, weight_decay=config.weight_decay,
                           **({"fused": True} if fused else {"foreach": True}))


def make_method(config: TrainConfig, backend: str) -> Method:
    """The run's training method (its loss on ``backend`` for ONE)."""
    return build_method(config, backend)


def run_costs(config: TrainConfig, num_classes: int,
              input_shape: tuple[int, ...], teacher: nn.Module | None = None
              ) -> tuple[dict[str, object], str]:
    """FLOPs per image and parameters of the run's network (counted on the meta device).

    The loss is the method's reference formulation (the fused kernels do the same work, which
    counts 0 FLOPs: no matmuls). For kd the training FLOPs are the student's; the frozen
    teacher's forward per image is counted separately (``teacher_flops``).

    Returns:
        The record stored in the run's first metrics record (``Costs.to_dict()``, plus
        ``teacher_flops`` for kd), and the line printed at the start of the run.
    """
    method = build_method(config)

    def loss_fn(logits, gate, y):
        outputs = (logits, gate) if config.method != "kd" else (logits, gate, logits[:, 0])
        return method.loss(outputs, y, 1.0).loss

    costs = model_costs(lambda m: build_model(config, num_classes, num_branches=m),
                        config.num_branches, input_shape, loss_fn=loss_fn)
    record, line = costs.to_dict(), costs.describe()
    if teacher is not None:
        record["teacher_flops"] = inference_flops(teacher, input_shape)
        line += (f"; the frozen teacher's forward adds {record['teacher_flops']:.3g} per "
                 "training image")
    return record, line


def _expected_fields(config: TrainConfig, stored: dict[str, object]) -> dict[str, object]:
    """The model fields a checkpoint (its config ``stored``) must agree on. A field ``stored``
    lacks (saved before the field existed) is checked only if this run sets it to other than
    its default, which is what that older run trained with."""
    defaults = TrainConfig()
    return {name: getattr(config, name) for name in MODEL_FIELDS
            if name in stored or getattr(config, name) != getattr(defaults, name)}


def _say(dist: distributed.DistInfo, message: str) -> None:
    if dist.is_main:
        print(message, flush=True)


def _summary_table(acc: dict[str, float]) -> str:
    rows = [f"  {name:<10} {100 * value:6.2f}%" for name, value in acc.items()]
    return "\n".join(["test top-1 (last epoch):", *rows])


def config_for(given: dict[str, object]) -> tuple[TrainConfig, list[str]]:
    """The run's config from the flags given: on the preset, or on the resumed run's settings.

    With ``--resume`` the checkpoint's stored config is the base (so ``--resume DIR`` alone
    continues that run as it was started) and only the flags given change it; the fields in
    :data:`~one_fast.config.INVOCATION_FIELDS` (where and how this process runs) are not taken
    from the checkpoint.
    """
    if not given.get("resume"):
        return config_from_flags(given)
    try:
        stored = load_checkpoint(str(given["resume"]))["config"]
    except FileNotFoundError as err:
        raise FileNotFoundError(f"--resume {given['resume']}: {err}") from None
    defaults = config_to_dict(TrainConfig())
    base = {**defaults, **{k: v for k, v in stored.items()
                           if k in defaults and k not in INVOCATION_FIELDS}}
    base["lr_milestones"] = tuple(base["lr_milestones"])
    return config_from_flags(given, base=base)


def run(config: TrainConfig, notes: tuple[str, ...] | list[str] = ()) -> dict[str, object]:
    """Train as configured; returns the last epoch's record (accuracies under "test_acc").

    Args:
        config: the run's settings (validated here).
        notes: lines to print before training (e.g. how --epochs rescaled the schedule).

    Raises:
        RunStopped: interrupted (Ctrl-C) or the checkpoint could not be written; the message
            says which epoch's checkpoint is saved and how to continue.
        ValueError: bad settings or an unusable run folder, naming the flag.
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
        build_model(config, num_classes=2)
    if config.tensorboard:
        try:
            import tensorboard  # noqa: F401  (torch.utils.tensorboard needs it)
        except ImportError:
            raise ValueError("--tensorboard needs the tensorboard package: pip install "
                             "tensorboard (or drop --tensorboard)") from None
    dist = distributed.init_distributed(config.device)
    try:
        if dist.is_main:
            prepare_run_folder(config.out_dir, resume=config.resume, overwrite=config.overwrite)
            for note in notes:
                print(note, flush=True)
        return _train(config, dist)
    finally:
        distributed.shutdown()


def _train(config: TrainConfig, dist: distributed.DistInfo) -> dict[str, object]:
    rt = resolve_runtime(config, dist)
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
        data_threads=config.data_threads, prefetch=config.prefetch)
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

    lr = torch.tensor(learning_rate(0, config.lr, config.lr_milestones, config.lr_decay),
                      device=rt.device)
    optimizer = build_optimizer(config, rt, model, lr)
    start_epoch = 0
    run_dir = Path(config.out_dir)
    if config.resume:
        state = load_checkpoint(config.resume, map_location=rt.device)
        stored = state.get("config")
        if not isinstance(stored, dict):
            raise CheckpointError(f"checkpoint {config.resume} has no config to check the "
                                  "model against")
        check_config(stored, _expected_fields(config, stored), Path(config.resume))
        if int(state["epoch"]) >= config.epochs:
            raise ValueError(
                f"--resume {config.resume}: that run already finished {state['epoch']} epochs "
                f"(--epochs {config.epochs}); give --epochs N with N > {state['epoch']} to "
                "train it longer")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        for group in optimizer.param_groups:
            group["lr"] = lr  # keep the live device tensor the step reads
        restore_rng_state(state["rng"], rt.device)
        start_epoch = int(state["epoch"])  # epochs completed
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
    saved_epoch = start_epoch  # the epoch run_dir/checkpoint.pt holds (0: none of this run)
    try:
        with MetricsLogger(run_dir, enabled=dist.is_main,
                           tensorboard=config.tensorboard) as logger:
            for epoch in range(start_epoch, config.epochs):
                record = _train_epoch(config, dist, rt, step, train_loader, epoch)
                if epoch == start_epoch:  # this invocation's first record carries the costs
                    record["costs"] = costs
                if (epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs:
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
        return (f"no epoch finished, so nothing was saved; start again with "
                f"--out-dir {run_dir} --overwrite")
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
    lr_value = learning_rate(epoch, config.lr, config.lr_milestones, config.lr_decay)
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
                means, _, bad = step.read_totals()
                _stop_if_bad(bad, epoch)
                loss = means["loss"]
            progress.update(y.shape[0], loss)
        means, steps, bad = step.read_totals()  # synchronises: the epoch's work is done
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


def _read_loss_after(steps: int) -> bool:
    """Read the running loss after steps 1, 2, 4, 8, 16, then every PROGRESS_EVERY steps: the
    bar shows a loss from the start, and a long epoch syncs only every PROGRESS_EVERY steps."""
    return steps < PROGRESS_EVERY and steps & (steps - 1) == 0 or steps % PROGRESS_EVERY == 0


def _stop_if_bad(bad_step: int, epoch: int) -> None:
    if bad_step >= 0:
        raise NonFiniteLossError(
            f"non-finite loss at epoch {epoch + 1}, step {bad_step + 1}: training stopped; "
            f"the last good checkpoint (if any) is untouched")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: every expected failure is one ``error: ...`` line.

    Returns:
        0 on success, 1 on an error, 130 after Ctrl-C (bad flags exit with argparse's 2).
    """
    given = parse_flags(argv)
    try:
        config, notes = config_for(given)
        run(config, notes)
    except RunStopped as err:
        interrupted = str(err).startswith("interrupted")
        print(err if interrupted else f"error: {err}", file=sys.stderr)
        return 130 if interrupted else 1
    except KeyboardInterrupt:  # before training started: nothing was written
        print("interrupted before training started; nothing was saved", file=sys.stderr)
        return 130
    except (NonFiniteLossError, ValueError, OSError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
