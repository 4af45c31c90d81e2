"""What every training method provides: its loss, its evaluation and its model requirements.

A method turns the model's outputs into a loss and into predictions; nothing else in the engine
needs to know which method runs. Outputs are the model's tuple ``(logits, gate)`` -- logits
(N, m, C), one column per branch or member; gate (N, m) -- followed, for ``kd`` only, by the
frozen teacher's logits (N, C) (see :class:`one_fast.methods.kd.StudentWithTeacher`).

Every method's :meth:`Method.loss` is a pure tensor function (no host reads, fixed shapes), so it
runs inside a compiled step replayed as a CUDA graph.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F

Outputs = Sequence[torch.Tensor]


class MethodLoss(NamedTuple):
    """A method's training loss and its named parts for logging.

    Attributes:
        loss: the 0-d differentiable loss to backpropagate.
        terms: 0-d detached values named as the method's ``term_names``, in that order, the
            first being ``"loss"`` (the same value, detached).
    """

    loss: torch.Tensor
    terms: dict[str, torch.Tensor]


class Method:
    """Base of the training methods (one, baseline, kd, dml, ensemble).

    Class attributes:
        name: the ``--method`` value.
        summary: what the method trains, in a few words (for help texts and errors).
        term_names: names of the logged loss terms, shared across methods where they mean the
            same thing ("loss", "ce_branches" = sum of the members' CE, "kl" = the method's
            unweighted distillation term, "ce_ensemble" for ONE).
        has_ensemble: evaluation reports an "ensemble" accuracy besides each member's.
        uses_gate: the loss reads the model's gate (ONE only; others should build no gate).
        min_branches: the fewest branches (members) the method can train.
        required_model: model settings the method fixes (config field -> value), e.g. the
            fully independent members of dml and ensemble.
        layout: how the network arranges its branches (``create_model``'s ``layout``): "one"
            (shared trunk, m parallel branches), or a method's own ("cl_ilr", "okddip").
        ensemble_output: what :meth:`ensemble_logits` returns: "logits", or
            "log_probabilities" (the log of averaged probabilities).
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    term_names: ClassVar[tuple[str, ...]]
    has_ensemble: ClassVar[bool] = False
    uses_gate: ClassVar[bool] = False
    min_branches: ClassVar[int] = 1
    required_model: ClassVar[Mapping[str, object]] = MappingProxyType({})
    layout: ClassVar[str] = "one"
    ensemble_output: ClassVar[str] = "logits"

    def loss(self, outputs: Outputs, target: torch.Tensor,
             kl_weight: float | torch.Tensor) -> MethodLoss:
        """The training loss of one batch.

        Args:
            outputs: the model's outputs (see the module docstring).
            target: (N,) integer labels.
            kl_weight: the scheduled weight of the method's distillation term (after ramp-up);
                a 0-d device tensor in the compiled step. Methods without one ignore it.

        Returns:
            A :class:`MethodLoss`.
        """
        raise NotImplementedError

    def student_branch(self, num_branches: int) -> int:
        """The branch deployed as the method's student (branch 0 unless the method says)."""
        return 0

    def standin_outputs(self, logits: torch.Tensor, gate: torch.Tensor) -> tuple:
        """Outputs shaped like the training module's, from the network's ``(logits, gate)``
        alone: for counting the loss's FLOPs where the training module adds tensors the
        network does not return (kd's teacher logits, OKDDip's peer targets)."""
        return logits, gate

    @staticmethod
    def prepare_training(model: torch.nn.Module) -> None:
        """Set up ``model`` for this method's training step (nothing unless the method needs
        more of the network than ``(logits, gate)``)."""

    def ensemble_logits(self, outputs: Outputs) -> torch.Tensor | None:
        """(N, C) float32 logits of the method's ensemble (softmax gives its probabilities), or
        None for methods without an ensemble."""
        return None

    def correct_counts(self, outputs: Outputs, target: torch.Tensor) -> torch.Tensor:
        """Correct top-1 predictions per member, then of the ensemble if any: int64 (m[+1],)."""
        logits = outputs[0]
        preds = [logits.argmax(-1)]  # (N, m)
        ensemble = self.ensemble_logits(outputs)
        if ensemble is not None:
            preds.append(ensemble.argmax(-1, keepdim=True))
        return (torch.cat(preds, 1) == target[:, None]).sum(0)

    def metric_names(self, num_branches: int) -> list[str]:
        """Names of :meth:`correct_counts`' entries: "branch_0".."branch_{m-1}"[, "ensemble"]."""
        names = [f"branch_{i}" for i in range(num_branches)]
        return names + ["ensemble"] if self.has_ensemble else names

    def check(self, **model: object) -> None:
        """Reject model settings this method cannot train, naming the flag.

        Args:
            model: config fields of the model, e.g. ``num_branches=3, shared_stages=0,
                share_stem=False, gate=False``; fields not given are not checked.

        Raises:
            ValueError: a setting conflicts with :attr:`required_model` or
                :attr:`min_branches`.
        """
        for field, want in self.required_model.items():
            if field in model and model[field] != want:
                raise ValueError(f"--method {self.name} needs {_flag(field, want)} "
                                 f"({self.summary}), got {field} = {model[field]!r}")
        branches = model.get("num_branches")
        if isinstance(branches, int) and branches < self.min_branches:
            raise ValueError(f"--method {self.name} needs --num-branches >= "
                             f"{self.min_branches} ({self.summary}), got {branches}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _flag(field: str, value: object) -> str:
    flag = field.replace("_", "-")
    if isinstance(value, bool):
        return f"--{flag}" if value else f"--no-{flag}"
    return f"--{flag} {value}"


def averaged_probability_logits(logits: torch.Tensor) -> torch.Tensor:
    """log of the members' mean softmax probabilities: (N, m, C) -> (N, C) float32.

    ``log(1/m sum_i softmax(z_i))`` via log-sum-exp of the log-probabilities, stable at any
    logit scale; its softmax is the averaged-probability ensemble (the paper's "m-Net").
    """
    log_p = F.log_softmax(logits.float(), dim=-1)
    return torch.logsumexp(log_p, dim=1) - math.log(logits.shape[1])
