"""ONE at vocabulary scale: m linear heads and the ONE loss, without materialising the logits.

``fused_linear_one_loss(hidden, weight, gate, target)`` equals
``one_loss(logits, gate, target)`` with ``logits[n, i] = hidden[n] @ weight[i].T + bias[i]``,
value and gradients, but processes the rows in chunks (:mod:`one_fast.loss.fused_linear_op`):
peak extra memory O(chunk x m x V) instead of O(N x m x V). The chunk size follows
:func:`one_fast.loss.fused_linear_chunks.auto_chunk_rows` unless ``chunk_size`` is given.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .backends import resolve_backend
from .fused_linear_chunks import auto_chunk_rows
from .fused_linear_op import forward_op
from .fused_op import kl_weight_tensor
from .reference import compute_dtype
from .terms import ONELossTerms, RowTerms, reduce_terms
from .validation import validate_one_loss_args


def _validate_linear(hidden, weight, bias, chunk_size) -> None:
    """Shapes and dtypes of the linear part; the ONE part is checked like ``one_loss``'s."""
    if not isinstance(weight, torch.Tensor) or weight.dim() != 3:
        raise ValueError(f"weight must be a 3-D tensor (m, V, H), got "
                         f"{tuple(weight.shape) if isinstance(weight, torch.Tensor) else weight}")
    m, v, h = weight.shape
    if not isinstance(hidden, torch.Tensor) or hidden.dim() not in (2, 3):
        raise ValueError(f"hidden must be a tensor (N, H) or (N, m, H), got "
                         f"{tuple(hidden.shape) if isinstance(hidden, torch.Tensor) else hidden}")
    if hidden.shape[-1] != h or (hidden.dim() == 3 and hidden.shape[1] != m):
        want = f"(N, {h}) or (N, {m}, {h})"
        raise ValueError(f"hidden must have shape {want} to match weight (m, V, H) = "
                         f"{(m, v, h)}, got {tuple(hidden.shape)}")
    if not weight.is_floating_point() or hidden.dtype != weight.dtype:
        raise TypeError(f"hidden and weight must share one floating dtype, got hidden "
                        f"{hidden.dtype} and weight {weight.dtype}")
    if hidden.device != weight.device:
        raise ValueError(f"hidden and weight must be on one device, got {hidden.device} and "
                         f"{weight.device}")
    if bias is not None:
        if not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (m, v):
            raise ValueError(f"bias must be None or a tensor of shape (m, V) = {(m, v)}, got "
                             f"{tuple(bias.shape) if isinstance(bias, torch.Tensor) else bias}")
        if bias.dtype != weight.dtype or bias.device != weight.device:
            raise TypeError(f"bias must have weight's dtype and device ({weight.dtype}, "
                            f"{weight.device}), got {bias.dtype}, {bias.device}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int)
                                   or chunk_size < 1):
        raise ValueError(f"chunk_size must be None or a positive int, got {chunk_size!r}")


def resolve_accum_dtype(accum_dtype: torch.dtype | None, weight_dtype: torch.dtype
                        ) -> torch.dtype:
    """The gradient accumulators' dtype: ``accum_dtype``, or by default the compute dtype
    (float32; float64 for float64 weights). Only that or the weights' own dtype is taken."""
    default = compute_dtype(weight_dtype)
    if accum_dtype is None:
        return default
    if accum_dtype not in (default, weight_dtype):
        raise ValueError(f"accum_dtype must be None, {default} or the weights' dtype "
                         f"{weight_dtype}, got {accum_dtype!r}")
    return accum_dtype


def _autocast(hidden, weight, bias):
    """Under autocast, cast like autocast's ``linear`` would (the operator itself is opaque):
    a bf16 trunk output meets float32 head weights there."""
    if not isinstance(hidden, torch.Tensor) or not isinstance(weight, torch.Tensor):
        return hidden, weight, bias  # validation reports it
    device_type = hidden.device.type
    if not torch.is_autocast_enabled(device_type) or not weight.is_floating_point():
        return hidden, weight, bias
    dtype = torch.get_autocast_dtype(device_type)
    return (hidden.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype))


def fused_linear_one_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    gate: torch.Tensor,
    target: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    temperature: float = 3.0,
    kl_weight: float | torch.Tensor = 1.0,
    detach_teacher: bool = True,
    ignore_index: int = -100,
    reduction: str = "mean",
    chunk_size: int | None = None,
    backend: str = "auto",
    accum_dtype: torch.dtype | None = None,
    return_terms: bool = False,
) -> torch.Tensor | ONELossTerms:
    """The ONE loss of m linear heads, computed chunk by chunk without materialising logits.

    Equals ``one_loss(logits, gate, target, ...)`` (values and gradients w.r.t. hidden, weight,
    bias and gate, to float32 rounding) with ``logits[n, i] = hidden[n] @ weight[i].T + bias[i]``
    (``hidden[n, i]`` for per-head hidden states).

    Args:
        hidden: (N, H) trunk output shared by the heads, or (N, m, H) one per head.
            float32/bfloat16/float16 (float64 for gradchecks), the dtype of ``weight``.
        weight: (m, V, H) the heads' weights (``nn.Linear(H, V).weight`` of each head).
        gate: (N, m) gate weights, rows summing to 1.
        target: (N,) integer labels in [0, V), or ``ignore_index``.
        bias: (m, V) the heads' biases, or None.
        temperature, kl_weight, detach_teacher, ignore_index, reduction, backend: as in
            :func:`one_fast.loss.one_loss` (``backend`` picks the per-chunk ONE kernel).
        chunk_size: rows per chunk; None picks
            :func:`~one_fast.loss.fused_linear_chunks.auto_chunk_rows` (N, m, V, dtype).
        accum_dtype: dtype of the gradient accumulators of hidden, weight and bias (the
            gate's, N x m, stays float32): None for float32 (float64 for float64 inputs), or
            the weights' dtype (e.g. bfloat16) to halve their memory; each chunk's product is
            then added in that dtype (rounded once per chunk).
        return_terms: also return the loss parts, as ``one_loss`` does.

    Returns:
        The loss in the compute dtype (float32; float64 for float64 inputs), or an
        :class:`~one_fast.loss.terms.ONELossTerms` if ``return_terms``.

    Memory, beyond the inputs (bytes; a = bytes per element of ``accum_dtype``, s = of the
    weights' dtype, c = rows per chunk, and G = the elements of the gradients wanted among
    hidden, weight and bias: N H (or N m H for per-head hidden) + m V H + m V)::

        forward  (held until backward)    a G               + O(N m) gate gradient and terms
                 (while a chunk runs)   + 2 c m V s           the chunk's logits and gradient
                                                              (+ c m V a on the CPU, a != s:
                                                              that gradient in a's dtype)
        backward (handing over)         a G + s G             the gradients in their own dtypes

    so the peak is max(a G + 2 c m V s, (a + s) G). At H = 4096, V = 131072, m = 4 the weight
    accumulator alone is 8 GiB in float32, 4 GiB with ``accum_dtype=torch.bfloat16``. With
    ``reduction="none"`` nothing is held from forward to backward; backward runs the chunks a
    second time (the per-row upstream gradient is known only then) and peaks at
    (a + s) G + 2 c m V s.
    """
    hidden, weight, bias = _autocast(hidden, weight, bias)
    _validate_linear(hidden, weight, bias, chunk_size)
    m, v, _ = weight.shape
    n = hidden.shape[0]
    # shape-only stand-in for the (N, m, V) logits, so the ONE arguments get one_loss's checks
    logits_like = torch.empty((), dtype=weight.dtype, device=hidden.device).expand(n, m, v)
    validate_one_loss_args(logits_like, gate, target, temperature, kl_weight, ignore_index,
                           reduction)
    kernel = resolve_backend(backend, hidden.device, m, float(temperature),
                             (weight.dtype, gate.dtype)).name
    rows = chunk_size if chunk_size is not None else auto_chunk_rows(n, m, v, weight.dtype)
    accum = resolve_accum_dtype(accum_dtype, weight.dtype)
    grad = torch.is_grad_enabled()
    needs = [grad and hidden.requires_grad, grad and weight.requires_grad,
             grad and bias is not None and bias.requires_grad, grad and gate.requires_grad]
    kl_w = kl_weight_tensor(kl_weight, hidden.device,
                            "kl_weight: a tensor that requires grad is not differentiated by "
                            "fused_linear_one_loss (pass kl_weight.detach())")
    loss, loss_rows, ce, ce_e, kl, *_ = forward_op(
        hidden, weight, bias, gate, target.long(), kl_w, float(temperature),
        bool(detach_teacher), int(ignore_index), reduction, int(rows), kernel, needs, accum)
    if not return_terms:
        return loss
    terms = reduce_terms(RowTerms(loss_rows, ce, ce_e, kl, target != ignore_index), reduction)
    return terms._replace(loss=loss)


class FusedLinearONELoss(nn.Module):
    """m linear heads + the ONE loss, fused: a drop-in for "m ``nn.Linear`` heads + ONELoss".

    Holds the heads' ``weight`` (m, V, H) and ``bias`` (m, V), initialised as ``nn.Linear``
    initialises each head, and computes :func:`fused_linear_one_loss` of its input without
    materialising the (N, m, V) logits. :meth:`logits` gives the logits when they are wanted
    (evaluation, generation).

    Example::

        heads = FusedLinearONELoss(hidden_size=512, num_classes=32000, num_heads=4)
        loss = heads(hidden, gate, target)    # (N, 512), (N, 4), (N,)
        loss.backward()
    """

    def __init__(
        self,
        hidden_size: int,
        num_classes: int,
        num_heads: int,
        *,
        bias: bool = True,
        temperature: float = 3.0,
        detach_teacher: bool = True,
        ignore_index: int = -100,
        reduction: str = "mean",
        chunk_size: int | None = None,
        backend: str = "auto",
        accum_dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("hidden_size", hidden_size), ("num_classes", num_classes),
                            ("num_heads", num_heads)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(num_heads, num_classes, hidden_size, **factory))
        self.bias = (nn.Parameter(torch.empty(num_heads, num_classes, **factory)) if bias
                     else None)
        self.temperature = temperature
        self.detach_teacher = detach_teacher
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.chunk_size = chunk_size
        self.backend = backend
        self.accum_dtype = accum_dtype
        resolve_accum_dtype(accum_dtype, self.weight.dtype)  # a bad value fails here
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Each head like ``nn.Linear``: U(-1/sqrt(H), 1/sqrt(H)) for weight and bias."""
        bound = 1.0 / math.sqrt(self.weight.shape[2])
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(
        self,
        hidden: torch.Tensor,
        gate: torch.Tensor,
        target: torch.Tensor,
        kl_weight: float | torch.Tensor = 1.0,
        return_terms: bool = False,
    ) -> torch.Tensor | ONELossTerms:
        """Return :func:`fused_linear_one_loss` of ``hidden`` (N, H) or (N, m, H)."""
        return fused_linear_one_loss(
            hidden, self.weight, gate, target, bias=self.bias, temperature=self.temperature,
            kl_weight=kl_weight, detach_teacher=self.detach_teacher,
            ignore_index=self.ignore_index, reduction=self.reduction,
            chunk_size=self.chunk_size, backend=self.backend, accum_dtype=self.accum_dtype,
            return_terms=return_terms)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The heads' logits (N, m, V), materialised (for evaluation or generation)."""
        if hidden.dim() == 2:
            z = torch.einsum("nh,mvh->nmv", hidden, self.weight)
        else:
            z = torch.einsum("nmh,mvh->nmv", hidden, self.weight)
        return z if self.bias is None else z + self.bias

    def extra_repr(self) -> str:
        m, v, h = self.weight.shape
        return (f"hidden_size={h}, num_classes={v}, num_heads={m}, "
                f"bias={self.bias is not None}, temperature={self.temperature}, "
                f"reduction={self.reduction!r}, chunk_size={self.chunk_size}, "
                f"backend={self.backend!r}, accum_dtype={self.accum_dtype}")
