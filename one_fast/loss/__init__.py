"""The ONE loss: validation, backend dispatch, and the drop-in ``ONELoss`` module.

Backends, each returning the same per-row terms (:class:`~one_fast.loss.terms.RowTerms`):

* ``"reference"`` — plain PyTorch, the specification (any device).
* ``"triton"`` — one fused Triton kernel for the terms and the gradients
  (:mod:`one_fast.loss.triton_kernel`); CUDA devices, and CPU tensors under Triton's interpreter
  (``TRITON_INTERPRET=1``, for tests). Absent when triton is not installed.
* ``"native"`` — the same fused operator in C++/CUDA (:mod:`one_fast.loss.native`, sources in
  ``kernels/``): CPU always, CUDA when built with nvcc; runs nowhere when the extension was not
  built at install time.

``backend="auto"`` picks the fastest backend available for the tensors' device (never the Triton
interpreter: on the CPU "auto" is "native" when the extension is built, else "reference"), and
the reference above :data:`FUSED_MAX_TEMPERATURE`, where only it keeps float32 accurate.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import torch
from torch import nn

from . import native, reference
from .dml import DMLLoss, DMLLossTerms, dml_loss
from .fused_linear import FusedLinearONELoss, fused_linear_one_loss
from .kd import KDLoss, KDLossTerms, kd_loss
from .terms import ONELossTerms, RowTerms, reduce_terms
from .validation import check_options, validate_gate_values, validate_one_loss_args

if importlib.util.find_spec("triton") is not None:
    from . import triton_kernel as triton_backend
else:  # triton not installed: the "triton" backend is simply unavailable
    triton_backend = None

RowTermsFn = Callable[..., RowTerms]

# name -> (row-terms function, predicate "can run on this device").
_BACKENDS: dict[str, tuple[RowTermsFn, Callable[[torch.device], bool]]] = {
    "reference": (reference.row_terms, lambda device: True),
}
if triton_backend is not None:
    _BACKENDS["triton"] = (triton_backend.row_terms, triton_backend.runs_on)
_BACKENDS["native"] = (native.row_terms, native.runs_on)
# "auto" tries these in order (fastest measured first; native beats the reference on the CPU,
# see one_fast.loss.native; triton vs native on CUDA is not measured yet).
_AUTO_ORDER: tuple[str, ...] = ("triton", "native", "reference")
# Most branches a backend's kernels hold (per-branch state in registers); others have no limit.
_MAX_BRANCHES: dict[str, int] = {"native": native.MAX_BRANCHES}
# Highest temperature the fused backends (triton, native) are trusted at. They compute the KL
# in one pass as a difference of log-sum-exps, whose float32 rounding (~eps * max|z| / T) does
# not shrink with the KL (~Var(z) / T^2): measured relative KL error for logits ~ N(0, 2^2),
# C = 100, float32, 2026-11-28: 6e-7 at T = 10, 4e-5 at T = 100, 3e-4 at T = 1e3, 0.1 at
# T = 1e4. The reference computes the KL cancellation-free above T = 10
# (reference.softened_kl: <= 1e-7 at every T up to 1e5), so "auto" uses it above this
# temperature.
FUSED_MAX_TEMPERATURE = 100.0
# Extra condition for "auto" to pick a backend (it can run elsewhere when named explicitly):
# the Triton interpreter runs on the CPU, but far slower than the reference.
_AUTO_ONLY_IF: dict[str, Callable[[torch.device], bool]] = {
    "triton": lambda device: device.type == "cuda",
}


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Names of the loss backends that can run on ``device``; the first is what "auto" picks.

    Backends "auto" may pick come first, fastest first; then the others that can run there.
    """
    device = torch.device(device)
    runnable = [name for name in _BACKENDS if _BACKENDS[name][1](device)]
    auto = [name for name in _AUTO_ORDER if name in runnable
            and _AUTO_ONLY_IF.get(name, lambda d: True)(device)]
    return auto + [name for name in runnable if name not in auto]


def _trusted_at(name: str, temperature: float) -> bool:
    return name == "reference" or temperature <= FUSED_MAX_TEMPERATURE


def resolve_backend(backend: str, device: torch.device, num_branches: int = 1,
                    temperature: float = 1.0) -> RowTermsFn:
    """Map a backend name (or "auto") to its row-terms function, with a clear error.

    "auto" skips backends that cannot take ``num_branches`` branches or ``temperature`` (above
    :data:`FUSED_MAX_TEMPERATURE`); a backend named explicitly that cannot is an error (never a
    silent fallback).
    """
    if backend == "auto":
        fits = [name for name in available_backends(device)
                if num_branches <= _MAX_BRANCHES.get(name, num_branches)
                and _trusted_at(name, temperature)]
        return _BACKENDS[fits[0]][0]
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {sorted(_BACKENDS)}, got {backend!r}")
    fn, runs_on = _BACKENDS[backend]
    if not runs_on(device):
        raise ValueError(f"backend {backend!r} cannot run on device {device}")
    limit = _MAX_BRANCHES.get(backend)
    if limit is not None and num_branches > limit:
        raise ValueError(f"backend {backend!r} takes at most {limit} branches, got logits with "
                         f"m = {num_branches}; use backend='auto', 'reference' or 'triton'")
    if not _trusted_at(backend, temperature):
        raise ValueError(
            f"backend {backend!r} is not accurate in float32 at temperature {temperature:g} > "
            f"{FUSED_MAX_TEMPERATURE:g} (its one-pass KL cancels: relative error ~1e-3 at "
            "T = 1e3); use backend='reference' or 'auto', which compute it cancellation-free")
    return fn


def one_loss(
    logits: torch.Tensor,
    gate: torch.Tensor,
    target: torch.Tensor,
    *,
    temperature: float = 3.0,
    kl_weight: float | torch.Tensor = 1.0,
    detach_teacher: bool = True,
    ignore_index: int = -100,
    reduction: str = "mean",
    backend: str = "auto",
    return_terms: bool = False,
) -> torch.Tensor | ONELossTerms:
    """The ONE (On-the-fly Native Ensemble) distillation loss.

    For each row n whose target is not ``ignore_index``::

        z_e = sum_i g_i z_i
        L_n = sum_i CE(z_i, y) + CE(z_e, y)
              + kl_weight * T^2 * sum_i KL(softmax(z_e/T) || softmax(z_i/T))

    Args:
        logits: (N, m, C) branch logits, float32/bfloat16/float16 (float64 for gradchecks).
        gate: (N, m) gate weights: finite, non-negative, rows summing to 1 (e.g. ``ONEResNet``'s
            second output, a softmax). Checked on the CPU; on CUDA this is the caller's contract
            (checking would synchronise with the device every call).
        target: (N,) integer labels in [0, C), or ``ignore_index``.
        temperature: T > 0 of the softened distributions in the KL terms (a Python or NumPy
            number).
        kl_weight: weight >= 0 of the KL terms; a number or a 1-element tensor (a tensor lets a
            ramp-up change it without recompiling a compiled step; its value is checked on the
            CPU only, see :func:`~one_fast.loss.validation.check_options`).
        detach_teacher: if True (the ONE authors' code), the KL terms do not backpropagate into
            the teacher z_e (nor the gate); if False they do.
        ignore_index: rows with this target contribute 0 and are not counted by "mean".
        reduction: "mean" (over non-ignored rows; 0 rows give 0), "sum", or "none" (per row).
        backend: "auto" or a name from :func:`available_backends`.
        return_terms: also return the loss parts for logging, computed in the same pass.

    Returns:
        The float32 loss (float64 for float64 input), or an :class:`ONELossTerms` if
        ``return_terms``.
    """
    validate_one_loss_args(logits, gate, target, temperature, kl_weight, ignore_index, reduction)
    validate_gate_values(gate)
    if not isinstance(kl_weight, torch.Tensor):
        kl_weight = float(kl_weight)  # NumPy scalars too
    row_terms = resolve_backend(backend, logits.device, logits.shape[1], float(temperature))
    rows = row_terms(logits, gate, target, float(temperature), kl_weight, bool(detach_teacher),
                     int(ignore_index))
    terms = reduce_terms(rows, reduction)
    return terms if return_terms else terms.loss


class ONELoss(nn.Module):
    """Module form of :func:`one_loss`, to drop into any PyTorch training loop.

    The settings are checked here, at construction (``ONELoss(temperature=0)`` raises), with the
    same errors :func:`one_loss` gives.

    Example::

        criterion = ONELoss(temperature=3.0)
        logits, gate = model(images)          # (N, m, C), (N, m)
        loss = criterion(logits, gate, labels, kl_weight=1.0)
        loss.backward()
    """

    def __init__(
        self,
        temperature: float = 3.0,
        detach_teacher: bool = True,
        ignore_index: int = -100,
        reduction: str = "mean",
        backend: str = "auto",
    ) -> None:
        super().__init__()
        check_options(temperature, "kl_weight", 1.0, ignore_index, reduction)
        if backend != "auto" and backend not in _BACKENDS:
            raise ValueError(f"backend must be 'auto' or one of {sorted(_BACKENDS)}, "
                             f"got {backend!r}")
        self.temperature = float(temperature)
        self.detach_teacher = detach_teacher
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.backend = backend

    def forward(
        self,
        logits: torch.Tensor,
        gate: torch.Tensor,
        target: torch.Tensor,
        kl_weight: float | torch.Tensor = 1.0,
        return_terms: bool = False,
    ) -> torch.Tensor | ONELossTerms:
        """Return ``one_loss`` of the inputs with this module's settings."""
        return one_loss(
            logits, gate, target,
            temperature=self.temperature, kl_weight=kl_weight,
            detach_teacher=self.detach_teacher, ignore_index=self.ignore_index,
            reduction=self.reduction, backend=self.backend, return_terms=return_terms,
        )

    def extra_repr(self) -> str:
        return (f"temperature={self.temperature}, detach_teacher={self.detach_teacher}, "
                f"ignore_index={self.ignore_index}, reduction={self.reduction!r}, "
                f"backend={self.backend!r}")


__all__ = ["FUSED_MAX_TEMPERATURE", "ONELoss", "ONELossTerms", "RowTerms", "available_backends",
           "one_loss"]
__all__ += ["DMLLoss", "DMLLossTerms", "KDLoss", "KDLossTerms", "dml_loss", "kd_loss"]
__all__ += ["FusedLinearONELoss", "fused_linear_one_loss"]
