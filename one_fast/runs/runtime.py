"""The config's "auto" choices resolved for this machine: device, compile, CUDA graphs, precision,
memory format, cuDNN autotuning, the loss backend ``--fused`` runs on, the CPU's intra-op
threads, and the optimizer that fits them."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import TrainConfig
from ..data.cpus import available_cores, count_from_env, local_processes
from ..engine import distributed
from ..loss import BACKENDS, FUSED_MAX_TEMPERATURE, available_backends, unavailable_reason
from ..methods import DEFAULT_TEMPERATURE
from .assembly import autocast_dtype


@dataclass(frozen=True)
class Runtime:
    """The config's "auto" choices resolved for this machine."""

    device: torch.device
    compile: bool
    cuda_graphs: bool
    amp_dtype: torch.dtype | None
    channels_last: bool
    loss_backend: str
    note: str  # lines to print: the CPU's threads, what --fused resolved to when it fell back
    cpu_threads: int | None = None  # intra-op threads to train with on the CPU (None: CUDA)
    # torch.backends.cudnn.benchmark for the run: on for CUDA, where every step has the same
    # shapes (fixed batches; the last partial batch only in evaluation), so cuDNN's autotuner
    # picks each convolution's fastest algorithm once. The trainer sets it; run.json records it
    # (the algorithms it picks may differ between runs, so results are not bitwise equal).
    cudnn_benchmark: bool = False


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
    threads = None
    if not cuda:
        threads, threads_line = cpu_threads()
        note = "\n".join(line for line in (note, threads_line) if line)
    return Runtime(
        device=dist.device,
        compile=config.compile if config.compile is not None else cuda,
        cuda_graphs=graphs,
        amp_dtype=amp_dtype,
        channels_last=config.channels_last if config.channels_last is not None else cuda,
        loss_backend=backend,
        note=note,
        cpu_threads=threads,
        cudnn_benchmark=cuda,
    )


def cpu_threads() -> tuple[int, str]:
    """Intra-op threads for training on the CPU, and the line saying so.

    ``OMP_NUM_THREADS`` when set; otherwise the cores this process may use, divided among the
    run's processes on this node (``LOCAL_WORLD_SIZE``), so that processes do not compete for
    cores.

    Raises:
        ValueError: ``OMP_NUM_THREADS`` is not a positive integer.
    """
    count = count_from_env("OMP_NUM_THREADS")
    if count is not None:
        return count, f"CPU: {count} intra-op thread{'s' if count > 1 else ''} (OMP_NUM_THREADS)"
    cores, processes = available_cores(), local_processes()
    count = max(1, cores // processes)
    return count, (f"CPU: {count} intra-op thread{'s' if count > 1 else ''} ({cores} "
                   f"core{'s' if cores > 1 else ''} available to this process / {processes} "
                   f"process{'es' if processes > 1 else ''} of the run on this node); on a "
                   f"machine busy with other work OMP_NUM_THREADS=1 can be several times faster")


def _fused_backend(config: TrainConfig, device: torch.device) -> tuple[str, str]:
    """The fused backend --fused runs on ``device``, and a note when it is not the CUDA kernel."""
    m = config.num_branches
    temperature = DEFAULT_TEMPERATURE["one"] if config.temperature is None else config.temperature
    if temperature > FUSED_MAX_TEMPERATURE:
        return "reference", (f"--fused: the fused kernels are not accurate in float32 at "
                             f"--temperature above {FUSED_MAX_TEMPERATURE:g}; using the "
                             "reference loss (cancellation-free KL)")
    fused = [name for name in available_backends(device) if name != "reference"]
    fits = [name for name in fused if m <= (BACKENDS[name].max_branches or m)]
    too_many = (f"the native kernel takes at most {BACKENDS['native'].max_branches} branches, "
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
    why = too_many if "native" in fused else unavailable_reason("native", device)
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


__all__ = ["Runtime", "build_optimizer", "cpu_threads", "resolve_runtime"]
