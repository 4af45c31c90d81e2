"""Knowledge distillation from a frozen teacher network (Hinton et al. 2015).

The teacher runs inside the training step: :class:`StudentWithTeacher` is the module the step
calls, returning the student's outputs followed by the teacher's logits, computed in eval mode
under ``no_grad``; :class:`KDMethod` turns those into ``kd_loss``.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import ClassVar

import torch
from torch import nn

from ..loss import kd_loss
from .base import Method, MethodLoss, Outputs


class KDMethod(Method):
    """A one-branch student trained with kd_loss from a frozen teacher's logits.

    Args:
        temperature: T of the KL term (Hinton et al.'s soft targets).
        distill: False drops the KL term (the student then trains on plain CE); the loss gets
            the number 0 as its weight, so the term is not computed.
    """

    name = "kd"
    summary = "a one-branch student distilled from a frozen teacher"
    term_names: ClassVar[tuple[str, ...]] = ("loss", "ce_branches", "kl")
    required_model = MappingProxyType({"num_branches": 1})

    def __init__(self, temperature: float = 4.0, distill: bool = True) -> None:
        self.temperature = temperature
        self.distill = distill

    def loss(self, outputs: Outputs, target: torch.Tensor,
             kl_weight: float | torch.Tensor) -> MethodLoss:
        if len(outputs) < 3:
            raise ValueError("method kd needs the teacher's logits after the student's outputs: "
                             "train a StudentWithTeacher module")
        logits, teacher_logits = outputs[0], outputs[2]
        if logits.dim() != 3 or logits.shape[1] != 1:
            raise ValueError(f"method kd trains a one-branch student: logits must be (N, 1, C), "
                             f"got shape {tuple(logits.shape)}")
        t = kd_loss(logits[:, 0], teacher_logits, target, temperature=self.temperature,
                    kd_weight=kl_weight if self.distill else 0.0, return_terms=True)
        return MethodLoss(t.loss, {"loss": t.loss.detach(), "ce_branches": t.ce, "kl": t.kl})

    def standin_outputs(self, logits: torch.Tensor, gate: torch.Tensor) -> tuple:
        """The student's own branch stands in for the teacher's logits."""
        return logits, gate, logits[:, 0]

    def __repr__(self) -> str:
        return f"KDMethod(temperature={self.temperature}, distill={self.distill})"


def teacher_logits(outputs: Outputs, teacher_method: Method | None,
                   teacher_output: str | int) -> torch.Tensor:
    """The (N, C) logits a teacher teaches with: its ensemble's or one branch's.

    Args:
        outputs: the teacher model's outputs ``(logits (N, m, C), gate (N, m))``.
        teacher_method: the method the teacher was trained with (its ensemble's definition).
        teacher_output: "ensemble" or a branch index.
    """
    if teacher_output == "ensemble":
        if teacher_method is None:
            raise ValueError("teacher_output 'ensemble' needs the teacher's method")
        ensemble = teacher_method.ensemble_logits(outputs)
        if ensemble is None:
            raise ValueError(f"teacher_output 'ensemble': a {teacher_method.name} teacher has "
                             f"no ensemble; choose a branch index")
        return ensemble
    return outputs[0][:, teacher_output]


class StudentWithTeacher(nn.Module):
    """The student and its frozen teacher as one module: ``(logits, gate, teacher_logits)``.

    The teacher always runs in eval mode (BatchNorm uses its running statistics) under
    ``no_grad``, and its parameters are frozen; ``train()`` switches only the student. Give
    the optimizer ``self.student.parameters()`` and checkpoint ``self.student`` (the teacher is
    the previous run's checkpoint). Compiles with the step like any model.

    Args:
        student: the network being trained; returns ``(logits (N, 1, C), gate (N, 1))``.
        teacher: the trained network; returns ``(logits (N, m, C), gate (N, m))``.
        teacher_output: "ensemble" (the teacher method's ensemble: ONE-E, or the averaged
            probabilities of dml/ensemble) or a branch index in [0, m).
        teacher_method: the method the teacher was trained with (needed for "ensemble").
    """

    def __init__(self, student: nn.Module, teacher: nn.Module,
                 teacher_output: str | int = "ensemble",
                 teacher_method: Method | None = None) -> None:
        super().__init__()
        _check_teacher_output(teacher, teacher_output, teacher_method)
        self.student = student
        self.teacher = teacher
        self.teacher_output = teacher_output
        self.teacher_method = teacher_method
        teacher.requires_grad_(False)
        teacher.eval()

    def train(self, mode: bool = True) -> StudentWithTeacher:
        """Set the student's mode; the teacher stays in eval mode."""
        super().train(mode)
        self.teacher.eval()
        return self

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(student logits (N, 1, C), student gate (N, 1), teacher logits (N, C))."""
        logits, gate = self.student(x)[:2]
        with torch.no_grad():
            taught = teacher_logits(self.teacher(x), self.teacher_method, self.teacher_output)
        return logits, gate, taught

    def extra_repr(self) -> str:
        return f"teacher_output={self.teacher_output!r}, teacher_method={self.teacher_method!r}"


def _check_teacher_output(teacher: nn.Module, teacher_output: str | int,
                          teacher_method: Method | None) -> None:
    """Reject a teacher output that cannot be taken from this teacher, naming the flag."""
    if teacher_output == "ensemble":
        if teacher_method is None or not teacher_method.has_ensemble:
            what = "no method given" if teacher_method is None else \
                f"a {teacher_method.name} teacher has none"
            raise ValueError(f"--teacher-output ensemble needs a teacher with an ensemble "
                             f"({what}); choose a branch index, e.g. --teacher-output 0")
        return
    if isinstance(teacher_output, bool) or not isinstance(teacher_output, int):
        raise ValueError(f"--teacher-output must be 'ensemble' or a branch index, got "
                         f"{teacher_output!r}")
    branches = getattr(teacher, "num_branches", None)
    if teacher_output < 0 or (branches is not None and teacher_output >= branches):
        raise ValueError(f"--teacher-output must be a branch index in [0, {branches}) for "
                         f"this teacher, got {teacher_output}")
