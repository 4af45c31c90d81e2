"""Training methods: how model outputs become a loss and predictions, one class per method.

``one`` (ONE, the default), ``baseline`` (one network, plain CE), ``kd`` (a one-branch student
distilled from a frozen teacher), ``dml`` (Deep Mutual Learning between m independent peers),
``ensemble`` (m independent networks, the paper's m-Net), ``cl_ilr`` (CL-ILR's tree of branches)
and ``okddip`` (OKDDip's peers and leader). This package is the only place that
knows the difference; the step calls ``method.loss(model(x), y, kl_weight)`` and the evaluator
``method.correct_counts(model(x), y)`` whatever the method.
"""

from __future__ import annotations

from .base import Method, MethodLoss, averaged_probability_logits
from .cl_ilr import CLILRMethod
from .dml import DMLMethod
from .flags import READERS, readers, unread_flags
from .independent import BaselineMethod, EnsembleMethod
from .kd import KDMethod, StudentWithTeacher, teacher_logits
from .okddip import OKDDipMethod
from .one import ONEMethod

METHODS: dict[str, type[Method]] = {
    cls.name: cls for cls in (ONEMethod, BaselineMethod, KDMethod, DMLMethod, EnsembleMethod,
                              CLILRMethod, OKDDipMethod)
}
# The temperature each method uses unless told otherwise: the ONE authors' T = 3, Hinton-style
# KD's customary T = 4, Deep Mutual Learning's plain softmax (T = 1), and winycg/MCL-OKD's
# CL-ILR T = 2 and OKDDip T = 3.
DEFAULT_TEMPERATURE = {"one": 3.0, "kd": 4.0, "dml": 1.0, "cl_ilr": 2.0, "okddip": 3.0}


def create_method(name: str, *, temperature: float | None = None, distill: bool = True,
                  detach_teacher: bool = True, backend: str = "auto") -> Method:
    """The method called ``name`` with the run's settings (those it has no use for are ignored).

    Args:
        name: one of :data:`METHODS` ("one", "baseline", "kd", "dml", "ensemble", "cl_ilr",
            "okddip").
        temperature: T of the distillation terms; None takes :data:`DEFAULT_TEMPERATURE`.
        distill: False when the distillation weight is 0 (``--kl-weight 0``): the KL terms of
            kd and dml are then not computed at all.
        detach_teacher: ONE only: stop the KL gradient at the ensemble teacher.
        backend: ONE only: the ``one_loss`` backend.

    Returns:
        A :class:`Method`.
    """
    if name not in METHODS:
        raise ValueError(f"--method must be one of {sorted(METHODS)}, got {name!r}")
    t = DEFAULT_TEMPERATURE.get(name) if temperature is None else temperature
    if name == "one":
        return ONEMethod(t, detach_teacher=detach_teacher, backend=backend, distill=distill)
    if name == "kd":
        return KDMethod(t, distill=distill)
    if name == "dml":
        return DMLMethod(t, distill=distill)
    if name == "cl_ilr":
        return CLILRMethod(t)
    if name == "okddip":
        return OKDDipMethod(t, distill=distill)
    return METHODS[name]()


__all__ = ["DEFAULT_TEMPERATURE", "METHODS", "READERS", "BaselineMethod", "CLILRMethod",
           "DMLMethod", "EnsembleMethod", "OKDDipMethod", "readers", "unread_flags",
           "KDMethod", "Method", "MethodLoss", "ONEMethod", "StudentWithTeacher",
           "averaged_probability_logits", "create_method", "teacher_logits"]
