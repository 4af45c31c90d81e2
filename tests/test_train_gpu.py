"""GPU checks of the fast trainer: CUDA-graph replay, compile + bf16, no silent fallback."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch._dynamo.utils import counters

from one_fast import ONEResNet, train
from one_fast.cli.train_flags import config_from_args
from one_fast.engine.step import WARMUP_STEPS, TrainStep
from one_fast.methods import ONEMethod, StudentWithTeacher, create_method
from one_fast.models import create_model
from tests.host_reads import HostReadCounter

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _sgd(model, lr, *, fused):
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4,
                           **({"fused": True} if fused else {"foreach": True}))


def _step(model, *, cuda_graphs, compile=False, backend="reference"):
    """As the trainer builds it: an eager step updates with fused SGD (capturable with a tensor
    lr), a compiled one traces the foreach SGD."""
    lr = torch.tensor(0.05, device="cuda")
    opt = _sgd(model, lr, fused=not compile)
    step = TrainStep(model, opt, ONEMethod(temperature=3.0, backend=backend), lr,
                     compile=compile, cuda_graphs=cuda_graphs)
    step.kl_weight.fill_(1.0)
    return step


def test_cuda_graph_step_equals_eager_step():
    torch.manual_seed(0)
    eager_model = ONEResNet(8, 10, 3).cuda()
    graph_model = copy.deepcopy(eager_model)
    eager, graphed = _step(eager_model, cuda_graphs=False), _step(graph_model, cuda_graphs=True)
    batches = [(torch.randn(32, 3, 32, 32, device="cuda"),
                torch.randint(0, 10, (32,), device="cuda")) for _ in range(WARMUP_STEPS + 4)]
    for x, y in batches:
        eager(x, y)
        graphed(x, y)
    assert graphed.graph is not None and graphed.graph_replays == 4
    for (name, a), b in zip(eager_model.state_dict().items(), graph_model.state_dict().values(),
                            strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=lambda s, n=name: f"{n}: {s}")


@pytest.mark.parametrize("cuda_graphs", [False, True], ids=["eager", "replayed"])
def test_step_reads_nothing_back(cuda_graphs):
    """One eager step (fused SGD, as the trainer builds it) or one replayed CUDA-graph step
    reads no value back to the host."""
    torch.manual_seed(0)
    step = _step(ONEResNet(8, 10, 3).cuda(), cuda_graphs=cuda_graphs)
    x = torch.randn(32, 3, 32, 32, device="cuda")
    y = torch.randint(0, 10, (32,), device="cuda")
    for _ in range(WARMUP_STEPS + 1):  # warm-up and capture
        step(x, y)
    with HostReadCounter() as reads:
        step(x, y)
    assert reads.total == 0, dict(reads.counts)
    assert step.read_totals()[1] == WARMUP_STEPS + 2


def test_eager_graph_capture_refuses_an_optimizer_that_reads_lr_on_the_host():
    model = ONEResNet(8, 10, 3).cuda()
    lr = torch.tensor(0.05, device="cuda")
    with pytest.raises(ValueError, match="cuda_graphs without compile cannot capture"):
        TrainStep(model, _sgd(model, lr, fused=False), None, lr, cuda_graphs=True)
    # compiled, the same foreach SGD is traced with lr as a tensor: accepted
    TrainStep(model, _sgd(model, lr, fused=False), None, lr, cuda_graphs=True, compile=True)


def test_fused_compiled_graphed_bf16_step_has_no_graph_breaks():
    torch.manual_seed(0)
    model = ONEResNet(14, 10, 3).cuda().to(memory_format=torch.channels_last)
    step = _step(model, cuda_graphs=True, compile=True, backend="triton")
    step.amp_dtype = torch.bfloat16
    torch._dynamo.reset()
    counters.clear()
    x = torch.randn(64, 3, 32, 32, device="cuda").to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (64,), device="cuda")
    for _ in range(WARMUP_STEPS + 5):
        step(x, y)
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    assert step.graph_replays == 5
    terms, steps, bad = step.read_totals()
    assert steps == WARMUP_STEPS + 5 and bad == -1 and terms["loss"] > 0


def test_default_cuda_run_uses_graphs_and_learns(tmp_path):
    base = config_from_args([])
    cfg = dataclasses.replace(base, epochs=3, fused=True, progress=False,
                              out_dir=str(tmp_path / "run"), lr_milestones=(2,))
    record = train.run(cfg)
    steps_per_epoch = 1437 // cfg.batch_size
    assert record["cuda_graph_replays"] == 3 * steps_per_epoch - WARMUP_STEPS
    assert record["test_acc"]["ensemble"] > 0.5


@pytest.mark.parametrize("name", ["baseline", "kd", "dml", "ensemble"])
def test_every_method_compiles_and_replays_like_its_eager_step(name):
    """Each method's step (kd: with its frozen teacher inside) compiled and replayed as a CUDA
    graph leaves the parameters the eager step leaves, and reads nothing back when replayed."""
    torch.manual_seed(0)
    independent = dict(shared_stages=0, share_stem=False, gate=False)
    m = 1 if name in ("baseline", "kd") else 2
    options = independent if name in ("dml", "ensemble") else {}
    student = create_model("resnet", num_classes=10, num_branches=m, depth=8, **options).cuda()
    teacher = create_model("resnet", num_classes=10, num_branches=3, depth=8).cuda()
    method = create_method(name)

    def module(net):
        return StudentWithTeacher(net, teacher, "ensemble", create_method("one")) \
            if name == "kd" else net

    def step_of(net, graphs):
        lr = torch.tensor(0.05, device="cuda")
        step = TrainStep(module(net), _sgd(net, lr, fused=not graphs), method, lr,
                         compile=graphs, cuda_graphs=graphs)
        step.kl_weight.fill_(1.0)
        return step

    graph_student = copy.deepcopy(student)
    eager, graphed = step_of(student, False), step_of(graph_student, True)
    batches = [(torch.randn(32, 3, 32, 32, device="cuda"),
                torch.randint(0, 10, (32,), device="cuda")) for _ in range(WARMUP_STEPS + 3)]
    for x, y in batches:
        eager(x, y)
        graphed(x, y)
    with HostReadCounter() as reads:
        graphed(*batches[-1])
    assert reads.total == 0, dict(reads.counts)
    eager(*batches[-1])
    assert graphed.graph_replays == 4  # 3 in the loop (capture included), 1 counted
    for (key, a), b in zip(student.state_dict().items(), graph_student.state_dict().values(),
                           strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=lambda s, n=key: f"{n}: {s}")
    assert graphed.read_totals()[0].keys() == set(method.term_names)
