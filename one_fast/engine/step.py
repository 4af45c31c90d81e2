"""The training step: forward + the method's loss, backward, SGD update; compiled, replayed as a
CUDA graph.

One call of :class:`TrainStep` is exactly one optimisation step on one batch, whatever the mode:

* eager: the three pieces run as written;
* ``compile``: model + loss are one ``torch.compile(fullgraph=True)`` function (AOTAutograd
  derives the matching compiled backward) and the optimizer update is a second one (a
  ``loss.backward()`` cannot live inside a fullgraph-compiled function);
* ``cuda_graphs``: the first ``WARMUP_STEPS`` calls run on a side stream (they compile and
  allocate everything, gradients included), the next call captures the whole step — zeroing
  gradients, forward, backward, update and the on-device bookkeeping — into one CUDA graph, and
  every later call copies the batch into the static input buffers and replays it.

Nothing inside the step reads a value back to the host: the learning rate and the KL weight are
device tensors the caller refills between steps, and the loss terms are summed on the device
(with the index of the first non-finite step) until :meth:`TrainStep.read_totals`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Protocol

import torch
from torch import nn

from ..methods import MethodLoss

WARMUP_STEPS = 3
# How a capture treats CUDA calls that could break it (torch.cuda.graph's capture_error_mode).
# "thread_local": only this thread is held to the capture rules. The input pipeline keeps
# working in threads of its own while the step captures -- DALI decodes up to `prefetch`
# batches ahead, and the batch just taken has made room in its queue, so its threads are busy
# exactly then -- and their CUDA calls (allocations, synchronisation inside nvJPEG) would
# invalidate a "global" capture (torch's default) or fail inside DALI. Capturing while the
# loader is drained is not possible by construction: DALI has no pause, and capturing before
# the pipeline starts would need warm-up steps on made-up batches, which would train the model
# on them. The capturing thread runs nothing but the step meanwhile; DALI's streams are its
# own and torch's capture stream does not synchronise with the legacy default stream.
CAPTURE_ERROR_MODE = "thread_local"


class LossMethod(Protocol):
    """What the step needs of a training method (every :class:`one_fast.methods.Method`)."""

    term_names: tuple[str, ...]

    def loss(self, outputs: tuple[torch.Tensor, ...], target: torch.Tensor,
             kl_weight: torch.Tensor) -> MethodLoss: ...


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


def prime_sgd_momentum(optimizer: torch.optim.SGD) -> None:
    """Create SGD's momentum buffers as zeros before the first step.

    Without dampening, ``0 * momentum + grad`` equals the ``clone(grad)`` SGD does on its first
    step, so the numbers are unchanged; but every step now takes the same code path, so the
    compiled update is traced once (not once for step 1 and again for step 2).
    """
    for group in optimizer.param_groups:
        if group["momentum"] == 0 or group["dampening"] != 0:
            continue
        for p in group["params"]:
            state = optimizer.state[p]
            if state.get("momentum_buffer") is None:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)


def capture_sync_reason(optimizer: torch.optim.Optimizer) -> str | None:
    """Why ``optimizer.step()`` would read a value back to the host (None if it would not).

    A CUDA graph cannot capture such a read ("operation not permitted when stream is
    capturing"). torch's for-loop and foreach SGD pass a tensor learning rate as a Python
    scalar (``alpha=-lr``), which reads it on the host; the fused SGD and the ``capturable``
    optimizers keep it on the device. A group with ``capturable=False`` (Adam and others) keeps
    its step count on the host. A compiled SGD update traces ``lr`` as a tensor and reads
    nothing, so :class:`TrainStep` asks this of eager steps only.

    Args:
        optimizer: the optimizer a :class:`TrainStep` would capture.

    Returns:
        A sentence naming the first offending param group, or None.
    """
    for i, group in enumerate(optimizer.param_groups):
        if group.get("fused") or group.get("capturable"):
            continue
        if isinstance(group.get("lr"), torch.Tensor):
            return (f"param group {i} of {type(optimizer).__name__} holds a tensor lr but is not "
                    f"fused: its update reads lr on the host")
        if group.get("capturable") is False:
            return (f"param group {i} of {type(optimizer).__name__} has capturable=False: its "
                    f"update reads its step count on the host")
    return None


def capture(graph: torch.cuda.CUDAGraph, body: Callable[[], None]) -> None:
    """Record ``body()`` into ``graph`` with :data:`CAPTURE_ERROR_MODE` (why: see there).

    Args:
        graph: an empty CUDA graph.
        body: the work to capture (it does not execute: replay the graph to run it).
    """
    with torch.cuda.graph(graph, capture_error_mode=CAPTURE_ERROR_MODE):
        body()


class TrainStep:
    """One SGD step of any method's network, with optional compilation and CUDA-graph replay.

    Args:
        model: the network (possibly DDP-wrapped); ``model(x)`` returns the outputs the method
            reads: ``(logits, gate)``, or for kd ``(logits, gate, teacher_logits)``.
        optimizer: an optimizer whose param groups' ``lr`` is the device tensor ``lr``; with
            ``cuda_graphs`` and no ``compile``, one whose update does not read the host
            (:func:`capture_sync_reason`: e.g. ``SGD(..., fused=True)``), else ValueError.
        method: the training method: ``method.loss(outputs, target, kl_weight)`` ->
            :class:`~one_fast.methods.MethodLoss` whose terms are ``method.term_names`` (summed
            on the device for :meth:`read_totals`).
        lr: 0-d float32 device tensor holding the learning rate (refilled by the caller).
        amp_dtype: autocast dtype for the network (``torch.bfloat16``) or None.
        compile: compile model + loss and the optimizer update.
        cuda_graphs: capture and replay the whole step as one CUDA graph (CUDA only).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, method: LossMethod,
                 lr: torch.Tensor, *, amp_dtype: torch.dtype | None = None,
                 compile: bool = False, cuda_graphs: bool = False) -> None:
        device = lr.device
        if cuda_graphs and device.type != "cuda":
            raise ValueError(f"cuda_graphs needs a CUDA device, got {device}")
        reason = capture_sync_reason(optimizer) if cuda_graphs and not compile else None
        if reason:
            raise ValueError(f"cuda_graphs without compile cannot capture this optimizer: "
                             f"{reason}; use torch.optim.SGD(..., fused=True), or compile=True")
        self.model = model
        self.optimizer = optimizer
        self.method = method
        self.term_names = tuple(method.term_names) if method is not None else ()
        self.device = device
        self.amp_dtype = amp_dtype
        self.lr = lr
        self.kl_weight = torch.zeros((), device=device)
        self.totals = torch.zeros(len(self.term_names), device=device)  # summed over steps
        self.steps = torch.zeros((), dtype=torch.int64, device=device)
        self.first_bad_step = torch.full((), -1, dtype=torch.int64, device=device)
        self.use_graphs = cuda_graphs
        self._raw_optimizer_step = inspect.unwrap(type(optimizer).step) if optimizer else None
        if isinstance(optimizer, torch.optim.SGD):
            prime_sgd_momentum(optimizer)
        # DDP's forward does bookkeeping Dynamo cannot trace (its logger), so a DDP-wrapped model
        # is compiled without fullgraph: Dynamo runs DDP's own code eagerly and compiles the
        # wrapped network inside it -- through DDPOptimizer, which splits the graph at DDP's
        # gradient buckets so that the compiled backward overlaps the all-reduces -- and the loss.
        fullgraph = not isinstance(model, nn.parallel.DistributedDataParallel)
        self.forward_loss = (torch.compile(self._forward_loss, fullgraph=fullgraph) if compile
                             else self._forward_loss)
        self.update = (torch.compile(self._update, fullgraph=True) if compile else self._update)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.graph_replays = 0
        self._warmup_done = 0
        self._static: tuple[torch.Tensor, torch.Tensor] | None = None

    # -- the pieces ------------------------------------------------------------------------
    def _forward_loss(self, x: torch.Tensor, y: torch.Tensor, kl_weight: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        # A CUDA graph must not capture autocast's cast cache (the cached casts would be freed
        # memory at replay), as the CUDA-graph notes of the PyTorch docs require.
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None,
                            cache_enabled=not self.use_graphs):
            outputs = self.model(x)
        # The loss runs outside autocast: it reads bf16 logits and computes in float32.
        result = self.method.loss(outputs, y, kl_weight)
        parts = torch.stack([result.terms[name].float() for name in self.term_names])
        return result.loss, parts

    @torch.no_grad()
    def _update(self, parts: torch.Tensor) -> None:
        # The optimizer's own ``step`` wrapper inserts deliberate graph breaks (to make AOT see
        # an inference graph); running its undecorated body under no_grad gives the same update
        # as one graph. Step hooks are not used by the engine.
        self._raw_optimizer_step(self.optimizer)
        # Bookkeeping stays on the device: sums for logging and the first non-finite step.
        bad = ~torch.isfinite(parts[0]) & (self.first_bad_step < 0)
        self.first_bad_step.copy_(torch.where(bad, self.steps, self.first_bad_step))
        self.totals.add_(parts)
        self.steps.add_(1)

    def _zero_grads(self) -> None:
        if self.use_graphs:
            # Gradients stay allocated so the captured graph keeps writing the same memory.
            grads = [p.grad for p in self.model.parameters() if p.grad is not None]
            if grads:
                torch._foreach_zero_(grads)
        else:
            self.optimizer.zero_grad(set_to_none=True)

    def _body(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self._zero_grads()
        loss, parts = self.forward_loss(x, y, self.kl_weight)
        loss.backward()
        self.update(parts)

    # -- the public step ------------------------------------------------------------------
    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Train on one batch (x (N, 3, H, W), y (N,)); nothing is read back to the host."""
        if not self.use_graphs:
            self._body(x, y)
            return
        if self._static is None:
            self._static = (torch.empty_like(x), torch.empty_like(y))
        static_x, static_y = self._static
        if x.shape != static_x.shape or y.shape != static_y.shape:
            raise ValueError(f"CUDA-graph step needs fixed batch shapes: captured "
                             f"{tuple(static_x.shape)}, got {tuple(x.shape)}")
        static_x.copy_(x)
        static_y.copy_(y)
        if self.graph is None and self._warmup_done < WARMUP_STEPS:
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                self._body(static_x, static_y)
            torch.cuda.current_stream(self.device).wait_stream(side)
            self._warmup_done += 1
            return
        if self.graph is None:
            self.graph = torch.cuda.CUDAGraph()
            capture(self.graph, lambda: self._body(static_x, static_y))
        self.graph.replay()  # capture does not execute: this replay is this call's step
        self.graph_replays += 1

    def read_totals(self) -> tuple[dict[str, float], int, int]:
        """Mean loss terms since the last reset, the step count, and the first bad step (-1).

        This is the one place that synchronises with the device.
        """
        values = torch.cat([self.totals, self.steps.view(1).to(self.totals.dtype)]).tolist()
        steps = int(values[-1])
        means = {name: v / max(steps, 1) for name, v in zip(self.term_names, values,
                                                              strict=False)}
        return means, steps, int(self.first_bad_step.item())

    def reset_totals(self) -> None:
        """Start a new logging window (outside any graph: same memory, new values)."""
        self.totals.zero_()
        self.steps.zero_()
        self.first_bad_step.fill_(-1)
