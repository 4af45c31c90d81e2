"""Training-step throughput (images/s): the ONE authors' step, the engine's step, and each of the
engine's optimisations alone on top of the authors' step.

Every variant is one :class:`one_fast.engine.step.TrainStep` call per batch — forward, ONE loss,
backward, SGD update — built from the trainer's own pieces (``one_fast.runs``: the config's
runtime resolution, ``build_model``, ``make_method``) on synthetic CIFAR-100-shaped batches
already on the device (``one_fast.data``'s device loader, augmented there), a different batch
each step.

* ``authors``: branches one after another (``model.batched = False``), reference loss, float32,
  eager — how the ONE authors' code runs;
* ``engine``: what ``python -m one_fast.train --fused`` runs on CUDA: batched branches, fused loss,
  bf16 autocast, channels_last, compiled, replayed as a CUDA graph;
* ``batched``, ``fused``, ``bf16``, ``channels_last``, ``compile``, ``cuda_graphs``: the authors'
  step with that one change.

CUDA: ONE ResNet-32, m = 3, 100 classes, batch 128. CPU: the same network at depth 8 and batch
32, so the CPU suite fits CI time; only what is meaningful there runs (batched, compile, and the
native fused loss when built); bf16, channels_last, CUDA graphs and the engine skip with reasons.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import pytest
import torch

from one_fast.cli.train_flags import config_from_args
from one_fast.data import load_synthetic, loaders_for
from one_fast.engine.distributed import DistInfo
from one_fast.engine.step import WARMUP_STEPS, TrainStep
from one_fast.runs import assembly, trainer
from one_fast.runs.runtime import build_optimizer, resolve_runtime

from .environment import DEVICE, LABEL, is_cuda
from .harness import measure

NUM_CLASSES = 100
DEPTH, BATCH = (32, 128) if is_cuda() else (8, 32)
BATCHES = 8  # distinct device-resident batches the steps cycle through


@dataclass(frozen=True)
class Variant:
    """Which of the engine's optimisations a step uses."""

    name: str
    batched: bool = False
    fused: bool = False
    bf16: bool = False
    channels_last: bool = False
    compile: bool = False
    cuda_graphs: bool = False

    @property
    def id(self) -> str:
        return f"{LABEL.lower()}-{self.name}"


AUTHORS = Variant("authors")
ENGINE = Variant("engine", batched=True, fused=True, bf16=True, channels_last=True,
                 compile=True, cuda_graphs=True)
# Cheap eager variants first and the compiled ones last (the engine, the slowest to set up,
# at the very end): a run cut short by a time limit keeps the most figures.
VARIANTS = (
    AUTHORS,
    Variant("batched", batched=True), Variant("fused", fused=True), Variant("bf16", bf16=True),
    Variant("channels_last", channels_last=True), Variant("cuda_graphs", cuda_graphs=True),
    Variant("compile", compile=True), ENGINE,
)
CUDA_ONLY = {"engine": "CUDA graphs", "cuda_graphs": "CUDA graphs",
             "bf16": "bf16 autocast (the engine's CUDA default)",
             "channels_last": "channels_last (the engine's CUDA default)"}


def _params() -> list:
    params = []
    for variant in VARIANTS:
        marks = []
        if variant.name in CUDA_ONLY:
            marks.append(pytest.mark.gpu)
            if not is_cuda():
                marks.append(pytest.mark.skip(
                    reason=f"step '{variant.name}': {CUDA_ONLY[variant.name]} is CUDA-only"))
        params.append(pytest.param(variant, id=variant.id, marks=marks))
    return params


def config_for(variant: Variant):
    """The trainer config of ``variant`` and its runtime as the trainer resolves it."""
    base = config_from_args(["--preset", "synthetic"])
    config = dataclasses.replace(
        base, depth=DEPTH, batch_size=BATCH, device=str(DEVICE), fused=variant.fused,
        compile=variant.compile, cuda_graphs=variant.cuda_graphs,
        amp="bf16" if variant.bf16 else "none", channels_last=variant.channels_last)
    return config, resolve_runtime(config, DistInfo(0, 1, DEVICE))


def build_step(variant: Variant, config, runtime) -> TrainStep:
    """Model, SGD and TrainStep exactly as the trainer (``one_fast.runs``) composes them."""
    torch.manual_seed(0)
    memory_format = torch.channels_last if runtime.channels_last else torch.contiguous_format
    model = assembly.build_model(config, NUM_CLASSES).to(DEVICE, memory_format=memory_format)
    model.batched = variant.batched
    lr = torch.tensor(config.lr, device=DEVICE)
    optimizer = build_optimizer(config, runtime, model, lr)
    if runtime.compile:
        torch._dynamo.reset()  # each compiled variant starts from a clean cache
    step = TrainStep(model, optimizer, trainer.make_method(config, runtime.loss_backend), lr,
                     amp_dtype=runtime.amp_dtype, compile=runtime.compile,
                     cuda_graphs=runtime.cuda_graphs)
    step.kl_weight.fill_(config.kl_weight)
    return step


def device_batches(channels_last: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``BATCHES`` augmented, normalised CIFAR-100-shaped batches resident on the device."""
    data = load_synthetic(NUM_CLASSES, num_train=BATCH * BATCHES, num_test=BATCH, seed=0)
    loader, _ = loaders_for(data, BATCH, device=DEVICE, seed=0, channels_last=channels_last)
    return list(loader.epoch_batches(0))


def check_finite(step: TrainStep, when: str) -> float:
    """The mean loss so far; fails the case if any step's loss was not finite."""
    means, steps, bad = step.read_totals()
    assert steps > 0 and bad == -1 and math.isfinite(means["loss"]), \
        f"non-finite loss {when} (first bad step {bad})"
    return means["loss"]


@pytest.mark.parametrize("variant", _params())
def test_train_step(benchmark, variant: Variant):
    """Time one training step of ``variant`` after warm-up (compile, graph capture)."""
    config, runtime = config_for(variant)
    if variant.fused and runtime.loss_backend == "reference":
        pytest.skip(f"step 'fused': {runtime.note}")
    if runtime.loss_backend == "triton" and not is_cuda():
        pytest.skip("step 'fused': only the Triton interpreter is available on the CPU")
    resolved = (runtime.loss_backend != "reference", runtime.amp_dtype is not None,
                runtime.channels_last, runtime.compile, runtime.cuda_graphs)
    wanted = (variant.fused, variant.bf16, variant.channels_last, variant.compile,
              variant.cuda_graphs)
    assert resolved == wanted, f"the trainer resolved {runtime}, not variant {variant}"
    step = build_step(variant, config, runtime)
    batches = device_batches(runtime.channels_last)

    # Warm-up: compilation, and with CUDA graphs the side-stream steps, capture and a replay.
    for i in range(WARMUP_STEPS + 2 if runtime.cuda_graphs else 1):
        step(*batches[i % len(batches)])
    check_finite(step, "during warm-up")

    benchmark.group = f"{LABEL} train step ONE ResNet-{DEPTH} m=3 batch {BATCH}"
    timing = measure(benchmark, lambda i: step(*batches[i]), len(batches), warmup=2,
                     min_rounds=3, max_rounds=200 if is_cuda() else 10)
    loss = check_finite(step, "while timing")
    if runtime.cuda_graphs:
        assert step.graph is not None and step.graph_replays > 0, "the CUDA graph never ran"
    benchmark.extra_info.update(
        case=f"step {variant.name}", kind="step", variant=variant.name, depth=DEPTH,
        batch=BATCH, branches=config.num_branches, classes=NUM_CLASSES,
        batched=variant.batched, loss_backend=runtime.loss_backend,
        amp=str(runtime.amp_dtype), channels_last=runtime.channels_last,
        compile=runtime.compile, cuda_graphs=runtime.cuda_graphs, mean_loss=loss)
    if timing is not None:
        benchmark.extra_info.update(timing.as_info(), images_per_s=BATCH / timing.median_s)
