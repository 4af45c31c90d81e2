"""``python -m one_fast.train``: configure, then compose data -> model -> loss -> step -> logs.

See ``python -m one_fast.train --help`` for every flag, and the README for the CIFAR recipe.
Under ``torchrun --nproc_per_node=K`` each process trains on its own shard of the training set
with ``--batch-size`` images per step (the global batch is K times that) and rank 0 alone writes
logs and checkpoints.
"""

from __future__ import annotations

import functools
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .config import MODEL_FIELDS, TrainConfig, config_from_args, config_to_dict
from .data import load_dataset
from .data.device import DeviceLoader, loaders_for
from .engine import distributed
from .engine.checkpoint import load_checkpoint, save_checkpoint
from .engine.evaluate import Evaluator
from .engine.metrics import MetricsLogger, gpu_telemetry, peak_memory_record, reset_peak_memory
from .engine.plot import plot_metrics
from .engine.progress import EpochProgress
from .engine.rng import capture_rng_state, restore_rng_state
from .engine.schedule import kl_weight, learning_rate
from .engine.step import NonFiniteLossError, TrainStep
from .loss import available_backends, one_loss
from .models import ONEResNet

PROGRESS_EVERY = 25  # steps between the (synchronising) reads of the running loss


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
    amp = config.amp if config.amp is not None else ("bf16" if cuda else "none")
    if amp not in ("bf16", "none"):
        raise ValueError(f"--amp must be bf16 or none, got {amp!r}")
    graphs = config.cuda_graphs
    if graphs is None:
        graphs = cuda and not dist.distributed
    if graphs and not cuda:
        raise ValueError("--cuda-graphs needs a CUDA device (this run is on the CPU)")
    if graphs and dist.distributed:
        raise ValueError("--cuda-graphs is not supported together with DDP; use --no-cuda-graphs")
    if config.sync_bn and not cuda:
        raise ValueError("--sync-bn needs CUDA devices (NCCL)")
    backend, note = "reference", ""
    if config.fused:
        fused = [name for name in available_backends(dist.device) if name != "reference"]
        if cuda and fused:
            backend = fused[0]
        elif "triton" in fused:  # the CPU, with TRITON_INTERPRET=1
            backend, note = "triton", ("--fused: no CUDA device; running the Triton kernel "
                                       "through the interpreter (TRITON_INTERPRET=1)")
        elif "native" in fused:
            backend, note = "native", "--fused: no CUDA device; using the native C++ CPU kernel"
        else:
            note = "--fused: no fused kernel can run here; using the reference PyTorch loss"
    return Runtime(
        device=dist.device,
        compile=config.compile if config.compile is not None else cuda,
        cuda_graphs=graphs,
        amp_dtype=torch.bfloat16 if amp == "bf16" else None,
        channels_last=config.channels_last if config.channels_last is not None else cuda,
        loss_backend=backend,
        note=note,
    )


def validate_config(config: TrainConfig) -> None:
    """Reject settings no run can use, naming the flag."""
    for name in ("epochs", "batch_size", "eval_every", "num_branches"):
        if getattr(config, name) < 1:
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"{flag} must be >= 1, got {getattr(config, name)}")
    if config.lr <= 0:
        raise ValueError(f"--lr must be > 0, got {config.lr}")
    if config.rampup < 0:
        raise ValueError(f"--rampup must be >= 0, got {config.rampup}")


def build_model(config: TrainConfig, num_classes: int) -> ONEResNet:
    """The ONE network the config describes (batched branches)."""
    return ONEResNet(config.depth, num_classes, config.num_branches, config.block,
                     config.shared_stages, config.gate, batched=True)


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


def make_criterion(config: TrainConfig, backend: str):
    """``criterion(logits, gate, y, kl_weight)`` -> ONELossTerms, with the run's settings."""
    loss = functools.partial(one_loss, temperature=config.temperature,
                             detach_teacher=config.detach_teacher, backend=backend,
                             return_terms=True)
    return lambda logits, gate, y, w: loss(logits, gate, y, kl_weight=w)


def _expected_fields(config: TrainConfig) -> dict[str, object]:
    return {name: getattr(config, name) for name in MODEL_FIELDS}


def _say(dist: distributed.DistInfo, message: str) -> None:
    if dist.is_main:
        print(message, flush=True)


def _summary_table(acc: dict[str, float]) -> str:
    rows = [f"  {name:<10} {100 * value:6.2f}%" for name, value in acc.items()]
    return "\n".join(["test top-1 (last epoch):", *rows])


def run(config: TrainConfig) -> dict[str, object]:
    """Train as configured; returns the last epoch's record (accuracies under "test_acc")."""
    validate_config(config)
    dist = distributed.init_distributed(config.device)
    try:
        return _train(config, dist)
    finally:
        distributed.shutdown()


def _train(config: TrainConfig, dist: distributed.DistInfo) -> dict[str, object]:
    rt = resolve_runtime(config, dist)
    if rt.note:
        _say(dist, rt.note)
    torch.manual_seed(config.seed)
    data = load_dataset(config.dataset, config.data_dir, config.download,
                        synthetic_classes=config.synthetic_classes)
    memory_format = torch.channels_last if rt.channels_last else torch.contiguous_format
    model = build_model(config, data.num_classes).to(rt.device, memory_format=memory_format)
    if config.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)

    lr = torch.tensor(learning_rate(0, config.lr, config.lr_milestones, config.lr_decay),
                      device=rt.device)
    optimizer = build_optimizer(config, rt, model, lr)
    start_epoch = 0
    run_dir = Path(config.out_dir)
    if config.resume:
        state = load_checkpoint(config.resume, expected=_expected_fields(config),
                                map_location=rt.device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        for group in optimizer.param_groups:
            group["lr"] = lr  # keep the live device tensor the step reads
        restore_rng_state(state["rng"], rt.device)
        start_epoch = int(state["epoch"])  # epochs completed
        _say(dist, f"resumed from {config.resume} after epoch {start_epoch}")

    train_model: nn.Module = model
    if dist.distributed:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
    step = TrainStep(train_model, optimizer, make_criterion(config, rt.loss_backend), lr,
                     amp_dtype=rt.amp_dtype, compile=rt.compile, cuda_graphs=rt.cuda_graphs)
    evaluator = Evaluator(model, amp_dtype=rt.amp_dtype, compile=rt.compile,
                          all_reduce=distributed.all_reduce_sum if dist.distributed else None)
    # Each rank trains on its shard and evaluates its share of the test set (counts summed).
    train_loader, test_loader = loaders_for(
        data, config.batch_size, device=rt.device, seed=config.seed, rank=dist.rank,
        world_size=dist.world_size, shard_eval=True, channels_last=rt.channels_last)
    _say(dist, f"one_fast: {config.dataset} ({len(data.train_labels)} train / "
               f"{len(data.test_labels)} test, {data.num_classes} classes), ResNet-{config.depth} "
               f"m={config.num_branches}, {sum(p.numel() for p in model.parameters()):,} params, "
               f"device {rt.device}, world {dist.world_size}, loss {rt.loss_backend}, "
               f"compile {rt.compile}, cuda graphs {rt.cuda_graphs}, amp "
               f"{rt.amp_dtype or 'none'}")

    record: dict[str, object] = {}
    with MetricsLogger(run_dir, enabled=dist.is_main, tensorboard=config.tensorboard) as logger:
        for epoch in range(start_epoch, config.epochs):
            record = _train_epoch(config, dist, rt, step, train_loader, epoch)
            if (epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs:
                record["test_acc"] = evaluator(test_loader.eval_batches())
            logger.log(record)
            if dist.is_main:
                state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "epoch": epoch + 1, "step": record["step"],
                         "schedule": {"lr": record["lr"], "kl_weight": record["kl_weight"]},
                         "rng": capture_rng_state(rt.device), "config": config_to_dict(config)}
                save_checkpoint(run_dir, state)
            distributed.barrier()
    if dist.is_main and record:
        plot_metrics(run_dir / "metrics.jsonl", run_dir / "curves.png")
        if "test_acc" in record:
            print(_summary_table(record["test_acc"]), flush=True)
        print(f"run folder: {run_dir}", flush=True)
    return record


def _train_epoch(config: TrainConfig, dist: distributed.DistInfo, rt: Runtime, step: TrainStep,
                 loader: DeviceLoader, epoch: int) -> dict[str, object]:
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
    for i, (x, y) in enumerate(loader.epoch_batches(epoch)):
        step(x, y)
        images += y.shape[0]
        loss = None
        if (i + 1) % PROGRESS_EVERY == 0:
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
    telemetry = gpu_telemetry(rt.device)
    if telemetry:
        record["gpu"] = telemetry
    if rt.cuda_graphs:
        record["cuda_graph_replays"] = step.graph_replays
    return record


def _stop_if_bad(bad_step: int, epoch: int) -> None:
    if bad_step >= 0:
        raise NonFiniteLossError(
            f"non-finite loss at epoch {epoch + 1}, step {bad_step + 1}: training stopped; "
            f"the last good checkpoint (if any) is untouched")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    config = config_from_args(argv)
    try:
        run(config)
    except (NonFiniteLossError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
