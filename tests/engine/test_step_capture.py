"""CUDA-graph capture beside a busy input pipeline: the step captures with
capture_error_mode="thread_local", so CUDA calls of other threads (DALI's decoding threads
allocate and synchronise while the step captures) neither break the capture nor fail there."""

from __future__ import annotations

import contextlib
import copy
import threading

import pytest
import torch

from one_fast import ONEResNet
from one_fast.engine import step as step_module
from one_fast.engine.step import WARMUP_STEPS, TrainStep
from one_fast.methods import ONEMethod


def test_capture_uses_thread_local_error_mode(monkeypatch):
    calls = []

    @contextlib.contextmanager
    def fake_graph(graph, **kwargs):
        calls.append(("enter", graph, kwargs))
        yield
        calls.append(("exit", graph))

    monkeypatch.setattr(torch.cuda, "graph", fake_graph)
    graph = object()
    step_module.capture(graph, lambda: calls.append(("body",)))
    assert calls == [("enter", graph, {"capture_error_mode": "thread_local"}), ("body",),
                     ("exit", graph)]
    assert step_module.CAPTURE_ERROR_MODE == "thread_local"


class BusyPipeline(threading.Thread):
    """What DALI's threads do meanwhile: fresh device allocations (each a new size, so the
    caching allocator calls cudaMalloc) and synchronisation of their own stream."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.started_work = threading.Event()
        self.iterations = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            stream = torch.cuda.Stream()
            with torch.cuda.stream(stream):
                while not self.stop.is_set():
                    mib = 1 + self.iterations % 48  # at most ~1.2 GB cached in all
                    buffer = torch.empty(mib << 20, dtype=torch.uint8, device="cuda")
                    buffer.fill_(self.iterations % 255)
                    stream.synchronize()
                    self.iterations += 1
                    self.started_work.set()
        except BaseException as exc:  # reported by the test
            self.error = exc
            self.started_work.set()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_graph_step_captures_while_another_thread_allocates_and_synchronises():
    torch.manual_seed(0)
    eager_model = ONEResNet(8, 10, 3).cuda()
    graph_model = copy.deepcopy(eager_model)

    def make(model, graphs):
        lr = torch.tensor(0.05, device="cuda")
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, fused=True)
        step = TrainStep(model, opt, ONEMethod(temperature=3.0), lr, cuda_graphs=graphs)
        step.kl_weight.fill_(1.0)
        return step

    eager, graphed = make(eager_model, False), make(graph_model, True)
    batches = [(torch.randn(32, 3, 32, 32, device="cuda"),
                torch.randint(0, 10, (32,), device="cuda")) for _ in range(WARMUP_STEPS + 3)]
    busy = BusyPipeline()
    busy.start()
    busy.started_work.wait(timeout=60)
    try:
        for x, y in batches:
            eager(x, y)
            graphed(x, y)  # the WARMUP_STEPS + 1-th call captures, the thread still busy
        torch.cuda.synchronize()
    finally:
        busy.stop.set()
        busy.join(timeout=60)
    assert busy.error is None, f"the busy thread failed: {busy.error!r}"
    assert busy.iterations > 0
    assert graphed.graph is not None and graphed.graph_replays == 3
    for (name, a), b in zip(eager_model.state_dict().items(), graph_model.state_dict().values(),
                            strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=lambda s, n=name: f"{n}: {s}")
