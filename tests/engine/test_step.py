"""TrainStep: the compiled step equals the eager one (with no graph breaks; under DDP too)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist
from torch._dynamo.backends.distributed import DDPOptimizer
from torch._dynamo.utils import counters
from torch.nn.parallel import DistributedDataParallel

from one_fast import ONEResNet
from one_fast.engine.step import TrainStep, capture_sync_reason
from one_fast.methods import ONEMethod


def make_step(model, compile):
    lr = torch.tensor(0.05)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4,
                          foreach=True)
    step = TrainStep(model, opt, ONEMethod(temperature=3.0), lr, compile=compile)
    step.kl_weight.fill_(0.5)
    return step


def test_compiled_step_matches_eager_without_graph_breaks():
    torch.manual_seed(0)
    eager_model = ONEResNet(8, 5, 2)
    compiled_model = copy.deepcopy(eager_model)
    eager, compiled = make_step(eager_model, False), make_step(compiled_model, True)
    batches = [(torch.randn(8, 3, 8, 8), torch.randint(0, 5, (8,))) for _ in range(3)]
    torch._dynamo.reset()
    counters.clear()
    for x, y in batches:
        eager(x, y)
        compiled(x, y)
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    # Two compiled functions (model + loss, optimizer update), each compiled once.
    assert counters["stats"]["unique_graphs"] == 2
    e_terms, e_steps, _ = eager.read_totals()
    c_terms, c_steps, _ = compiled.read_totals()
    assert e_steps == c_steps == 3
    for name in e_terms:
        assert c_terms[name] == pytest.approx(e_terms[name], rel=1e-4), name
    assert_same_parameters(eager_model, compiled_model)


def assert_same_parameters(expected, actual):
    for (name, a), b in zip(expected.state_dict().items(), actual.state_dict().values(),
                            strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=lambda s, n=name: f"{n}: {s}")


@pytest.mark.slow
def test_compiled_step_of_a_ddp_model_matches_eager(tmp_path, monkeypatch):
    # One gloo process is enough: DDP's forward runs the same untraceable bookkeeping (its
    # logger) that made torch.compile(fullgraph=True) fail under torchrun.
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)
    bucket_graphs = []
    compile_fn = DDPOptimizer.compile_fn

    def counting_compile_fn(self, gm, example_inputs):
        bucket_graphs.append(gm)
        return compile_fn(self, gm, example_inputs)

    monkeypatch.setattr(DDPOptimizer, "compile_fn", counting_compile_fn)
    try:
        torch.manual_seed(0)
        eager_model = ONEResNet(8, 5, 2)
        compiled_model = copy.deepcopy(eager_model)
        eager = make_step(DistributedDataParallel(eager_model), False)
        compiled = make_step(DistributedDataParallel(compiled_model), True)
        torch._dynamo.reset()
        for _ in range(3):
            x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 5, (8,))
            eager(x, y)
            compiled(x, y)
    finally:
        dist.destroy_process_group()
    # The network inside DDP was compiled through DDPOptimizer (graphs split at DDP's gradient
    # buckets, so that a compiled backward can overlap the all-reduces).
    assert bucket_graphs
    assert compiled.read_totals()[1] == 3
    assert_same_parameters(eager_model, compiled_model)


def test_totals_and_first_bad_step_stay_on_device():
    torch.manual_seed(1)
    step = make_step(ONEResNet(8, 5, 2), False)
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 5, (4,))
    step(x, y)
    step(x * float("nan"), y)
    step(x, y)
    _, steps, bad = step.read_totals()
    assert steps == 3 and bad == 1
    step.reset_totals()
    assert step.read_totals()[1:] == (0, -1)


def test_cuda_graphs_need_cuda():
    with pytest.raises(ValueError, match="cuda_graphs needs a CUDA device"):
        TrainStep(torch.nn.Linear(2, 2), None, None, torch.tensor(0.1), cuda_graphs=True)


def test_optimizers_that_read_the_host_are_named_before_capture():
    params = [torch.nn.Parameter(torch.zeros(2))]
    lr = torch.tensor(0.1)
    for kwargs in (dict(foreach=True), dict(foreach=False)):  # alpha=-lr reads lr on the host
        reason = capture_sync_reason(torch.optim.SGD(params, lr=lr, momentum=0.9, **kwargs))
        assert reason and "tensor lr" in reason and "param group 0 of SGD" in reason
    assert "capturable=False" in capture_sync_reason(torch.optim.Adam(params, lr=0.1))
    # fused SGD and capturable optimizers keep lr and their state on the device
    assert capture_sync_reason(torch.optim.SGD(params, lr=lr, momentum=0.9, fused=True)) is None
    assert capture_sync_reason(torch.optim.Adam(params, lr=lr, capturable=True)) is None
