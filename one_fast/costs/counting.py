"""What a network costs: FLOPs per image to train and to test, and parameters.

Everything is counted by ``torch.utils.flop_counter.FlopCounterMode`` while the real model runs
(no formulas per layer). Its convention, used wherever these numbers are shown: **FLOPs = 2 x
multiply-adds**, counted for the matmul-like ops (convolutions, linear layers, batched matmuls and
their backward passes); batch norm, activations, pooling, additions and the loss's softmax/log
arithmetic count 0. That is also the convention of the ONE authors' figures (2.28e8 FLOPs for
the ONE ResNet-32 forward, 8.29e8 for their ResNet-110), which FlopCounterMode reproduces.

One rule is replaced: torch's count for the backward of a *grouped* convolution (torch 2.13)
counts the weight gradient `groups` times over (pytorch/pytorch pull request 183405 proposes
dividing it by groups), and ONE's batched branches are grouped convolutions (groups = m): a ONE
ResNet-32's (m = 3) training FLOPs came out 9.39e8 instead of 6.85e8. Here each multiply-add of a
convolution's forward counts as one multiply-add of its input gradient and one of its weight
gradient, whatever the grouping, so the batched network costs exactly what its branches run one
by one cost.

By default the networks are built and run on the ``meta`` device: shapes only, no arithmetic and
no memory, so counting even the 164-layer network takes about a second on a CPU (a few seconds
the first time, while the meta kernels load), and the global random state is restored afterwards
(building a network draws its initial weights).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from ..loss import reference

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

FLOPS_CONVENTION = "FLOPs = 2 x multiply-adds (torch FlopCounterMode)"
# Training batch norm needs more than one value per channel (the gate's BatchNorm1d sees one per
# image), so the training pass runs on 2 images; every counted op's FLOPs are linear in the batch.
_TRAIN_BATCH = 2


def one_loss_reference(logits: torch.Tensor, gate: torch.Tensor,
                       target: torch.Tensor) -> torch.Tensor:
    """The ONE loss (T = 3, weight 1, teacher detached) in plain PyTorch, mean over rows.

    The default loss for counting training FLOPs: the reference formulation runs on any device
    (the meta device included), and the fused backends compute the same terms.
    """
    return reference.row_terms(logits, gate, target, 3.0, 1.0, True, -100).loss.mean()


@dataclass(frozen=True)
class Costs:
    """FLOPs per image (2 x multiply-adds) and parameter counts of a ONE-style network.

    Attributes:
        num_branches: m of the network trained.
        input_shape: (C, H, W) of one image.
        train_flops: one training step's forward + backward of the whole network (all branches,
            gate) and the loss, per image.
        student_flops: test forward of the deployable student (one branch: the m = 1 network).
        ensemble_flops: test forward of the whole network plus the gated sum of the branch
            logits (ONE-E); equal to student_flops when m = 1.
        student_params: parameters of the m = 1 network.
        ensemble_params: parameters of the whole network (all branches and the gate).
    """

    num_branches: int
    input_shape: tuple[int, ...]
    train_flops: int
    student_flops: int
    ensemble_flops: int
    student_params: int
    ensemble_params: int

    def describe(self) -> str:
        """One line for the start of a run."""
        size = "x".join(map(str, self.input_shape))
        trained = "1 branch, loss"
        test = f"test: student {self.student_flops:.3g}"
        params = f"params: student {self.student_params:,}"
        if self.num_branches > 1:
            trained = f"{self.num_branches} branches, gate, loss"
            test += f", ensemble of {self.num_branches} {self.ensemble_flops:.3g}"
            params += f", ensemble {self.ensemble_params:,}"
        return (f"cost per {size} image ({FLOPS_CONVENTION}): train {self.train_flops:.3g} "
                f"(forward + backward: {trained}); {test}; {params}")

    def to_dict(self) -> dict:
        """JSON-ready record for a run's metrics, the convention included."""
        record = asdict(self)
        record["input_shape"] = list(self.input_shape)
        record["flops_convention"] = FLOPS_CONVENTION
        return record


def _conv_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation,
                         transposed, _output_padding, _groups, output_mask, out_shape=None,
                         **kwargs) -> int:
    """FLOPs of aten.convolution_backward: the forward's FLOPs once per gradient computed
    (output_mask: input, weight, bias; the bias gradient is a sum, 0 FLOPs)."""
    forward = conv_flop_count(x_shape, w_shape, grad_out_shape, transposed)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def _count(fn: Callable[[], object]) -> int:
    with FlopCounterMode(display=False,
                         custom_mapping={torch.ops.aten.convolution_backward:
                                         _conv_backward_flops}) as counter:
        fn()
    return counter.get_total_flops()


def _device_of(model: nn.Module) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def _outputs(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the model and check it returns (logits (N, m, C), gate (N, m)); a plain classifier's
    logits (N, C) (a student extracted as its own class) count as one member."""
    out = model(x)
    if isinstance(out, torch.Tensor) and out.dim() == 2:
        out = (out.unsqueeze(1), out.new_ones(out.shape[0], 1))
    if not (isinstance(out, tuple) and len(out) == 2
            and all(isinstance(t, torch.Tensor) for t in out)):
        raise TypeError(f"the model's forward must return (logits, gate) or logits (N, C), got "
                        f"{type(out).__name__}")
    logits, gate = out
    n = x.shape[0]
    if logits.dim() != 3 or logits.shape[0] != n or tuple(gate.shape) != logits.shape[:2]:
        raise ValueError(f"the model's forward must return logits (N, m, C) and gate (N, m) "
                         f"for N = {n} images, got {tuple(logits.shape)} and "
                         f"{tuple(gate.shape)}")
    return logits, gate


def _check_shape(input_shape: tuple[int, ...]) -> tuple[int, ...]:
    input_shape = tuple(input_shape)
    if not input_shape or not all(isinstance(s, int) and s > 0 for s in input_shape):
        raise ValueError(f"input_shape must be positive ints (C, H, W), got {input_shape!r}")
    return input_shape


def _inference(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, int]:
    """(FLOPs of one image's test prediction, number of branches m)."""
    branches = []

    def predict() -> None:
        x = torch.zeros((1, *input_shape), device=_device_of(model))
        logits, gate = _outputs(model, x)
        branches.append(logits.shape[1])
        if logits.shape[1] > 1:
            torch.einsum("nm,nmc->nc", gate, logits)  # the ONE-E prediction

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            flops = _count(predict)
    finally:
        model.train(was_training)
    return flops, branches[0]


def inference_flops(model: nn.Module, input_shape: tuple[int, ...] = (3, 32, 32)) -> int:
    """FLOPs (2 x multiply-adds) of one image's test prediction: the forward in eval mode and,
    with m > 1 branches, the gated sum of the branch logits (the ONE-E prediction).

    Args:
        model: a module whose ``forward(x)`` returns ``(logits (N, m, C), gate (N, m))`` (or a
            plain classifier's logits (N, C): one member), on any device (the meta device:
            shapes only).
        input_shape: (C, H, W) of one image.

    Returns:
        FLOPs per image.
    """
    return _inference(model, _check_shape(input_shape))[0]


def training_flops(model: nn.Module, input_shape: tuple[int, ...] = (3, 32, 32),
                   loss_fn: LossFn | None = None) -> int:
    """FLOPs (2 x multiply-adds) per image of one training step's forward + backward.

    The model runs in train mode on zero images (2 of them: training batch norm needs more than
    one value per channel) with zero targets; gradients are computed for its parameters, not
    for the images. The model's ``.grad`` fields are left set; use a throwaway copy.

    Args:
        model: as for :func:`inference_flops`.
        input_shape: (C, H, W) of one image.
        loss_fn: ``loss_fn(logits, gate, target) -> scalar``; default :func:`one_loss_reference`.
            Its elementwise work counts 0 FLOPs either way.

    Returns:
        FLOPs per image.
    """
    input_shape, loss_fn = _check_shape(input_shape), loss_fn or one_loss_reference
    device = _device_of(model)

    def step() -> None:
        x = torch.zeros((_TRAIN_BATCH, *input_shape), device=device)
        target = torch.zeros(_TRAIN_BATCH, dtype=torch.long, device=device)
        logits, gate = _outputs(model, x)
        loss_fn(logits, gate, target).backward()

    was_training = model.training
    model.train()
    try:
        flops = _count(step)
    finally:
        model.train(was_training)
    return flops // _TRAIN_BATCH


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def model_costs(build: Callable[[int], nn.Module], num_branches: int,
                input_shape: tuple[int, ...] = (3, 32, 32), *, loss_fn: LossFn | None = None,
                device: torch.device | str = "meta") -> Costs:
    """Count the training and test cost of the network ``build(num_branches)``.

    Counts, under FlopCounterMode: one training forward + backward (with the loss) of
    ``build(num_branches)`` (:func:`training_flops`); its test prediction with the gated
    ensemble sum (:func:`inference_flops`); the test forward of ``build(1)``, the deployable
    student (trunk + one branch, no gate: what one branch of the m-branch network computes).

    Args:
        build: maps a branch count m to a fresh network whose ``forward(x)`` returns
            ``(logits (N, m, C), gate (N, m))``, e.g. ``lambda m: ONEResNet(32, 100, m)``. It is
            called inside ``with torch.device(device)`` and must not need real data.
        num_branches: m of the network trained (>= 1).
        input_shape: (C, H, W) of one image.
        loss_fn: ``loss_fn(logits, gate, target) -> scalar`` for the training pass; default
            :func:`one_loss_reference`.
        device: where to build and run: "meta" (default: shapes only, no arithmetic), or a real
            device for a model with ops that have no meta implementation.

    Returns:
        Costs.

    Raises:
        ValueError, TypeError: bad num_branches/input_shape, or a network that does not return
            (logits, gate) with the number of branches asked for.
    """
    if not isinstance(num_branches, int) or num_branches < 1:
        raise ValueError(f"num_branches must be a positive int, got {num_branches!r}")
    input_shape = _check_shape(input_shape)
    device = torch.device(device)
    cuda = [] if device.type != "cuda" else [
        torch.cuda.current_device() if device.index is None else device.index]
    with torch.random.fork_rng(devices=cuda):  # building draws initial weights: leave no trace
        with torch.device(device):
            network, student = build(num_branches), build(1)
    ensemble_flops, m = _inference(network, input_shape)
    student_flops, one = _inference(student, input_shape)
    if (m, one) != (num_branches, 1):
        raise ValueError(f"build(m) must return a network with m branches: build({num_branches}) "
                         f"gave {m}, build(1) gave {one}")
    return Costs(
        num_branches=num_branches,
        input_shape=input_shape,
        train_flops=training_flops(network, input_shape, loss_fn),
        student_flops=student_flops,
        ensemble_flops=ensemble_flops,
        student_params=_params(student),
        ensemble_params=_params(network),
    )
