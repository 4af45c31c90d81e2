"""The chunked linear heads + fused ONE loss as two registered operators.

Forward (``one_fast::fused_linear_one_loss``), for rows in chunks of ``chunk_rows``::

    z      = hidden[chunk] @ weight[i].T + bias[i]      (chunk, m, V)  the m heads' logits
    terms, dz, dgate = fused ONE kernel(z, gate, target)  dz = d loss_n / d z[n] (per row)
    grad_hidden[chunk]  = sum_i dz[:, i] @ weight[i]    (shared hidden; per head: each i apart)
    grad_weight[i]     += dz[:, i].T @ hidden[chunk]    accumulators in accum_dtype
    grad_bias[i]       += sum_n dz[n, i]
    (z and dz are dropped before the next chunk)

so the extra memory is two chunks of logits, never N x m x V. For ``reduction`` "mean" and "sum"
the forward returns the gradients of the *reduced* loss, and backward only scales them by the
incoming scalar gradient. For "none" the incoming gradient is a vector g (N,) known only in
backward, and grad_weight = sum_n g_n dz_n^T hidden_n cannot be formed from per-row pieces
without keeping dz (N x m x V): so the forward computes the terms only, and backward
(``one_fast::fused_linear_one_loss_backward``) runs the chunks again with dz scaled by g --
exact, at the price of the logits GEMM and the kernel's first pass once more.

The per-chunk kernel is the ``fused_op`` of the backend named by ``backend``
(:data:`one_fast.loss.backends.BACKENDS`): a fused ONE kernel ("native", "triton") or the
reference spec differentiated with ``torch.func.vjp`` (:mod:`one_fast.loss.reference_fused`,
which runs where nothing else does). Gradient outputs are in ``accum_dtype``: float32
(float64 for float64 inputs) by default -- bf16/fp16 GEMMs write float32 on CUDA where torch has
float32-output GEMMs (torch >= 2.8); elsewhere each chunk's product is rounded once to the input
dtype before the float32 accumulation on CUDA, and multiplied in float32 on the CPU -- or the
inputs' own dtype, where every chunk's product is added in that dtype (half the memory for
bf16, one rounding per chunk). The loop reads shapes only: no host synchronisation, so the
operators can be captured in a CUDA graph.
"""

from __future__ import annotations

import functools
import warnings

import torch

from .backends import BACKENDS
from .reference import compute_dtype
from .terms import reduce_rows

FORWARD = "one_fast::fused_linear_one_loss"
BACKWARD = "one_fast::fused_linear_one_loss_backward"
_INPUTS = ("Tensor hidden, Tensor weight, Tensor? bias, Tensor gate, Tensor target, "
           "Tensor kl_weight")
_OPTIONS = "float temperature, bool detach_teacher, int ignore_index"
_CHUNKING = "int chunk_rows, str backend, bool[] needs, ScalarType accum_dtype"
FORWARD_SCHEMA = (f"({_INPUTS}, {_OPTIONS}, str reduction, {_CHUNKING}) -> "
                  "(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)")
BACKWARD_SCHEMA = (f"({_INPUTS}, Tensor grad_rows, {_OPTIONS}, {_CHUNKING}) -> "
                   "(Tensor, Tensor, Tensor, Tensor)")


# Set to False (with a warning) if a float32-output GEMM is ever refused at run time.
_FP32_OUTPUT_GEMMS_WORK = True


@functools.cache
def _has_fp32_output_gemms(device_type: str) -> bool:
    """Whether torch has bf16/fp16 GEMMs writing float32 on this device type (CUDA, torch>=2.8)."""
    if device_type != "cuda":
        return False
    names = ("aten::mm.dtype", "aten::bmm.dtype", "aten::addmm.dtype_out",
             "aten::baddbmm.dtype_out")
    try:
        return all(torch._C._dispatch_has_kernel_for_dispatch_key(n, "CUDA") for n in names)
    except RuntimeError:  # an older torch without these overloads
        return False


def _fp32_output_gemms(device_type: str) -> bool:
    return _FP32_OUTPUT_GEMMS_WORK and _has_fp32_output_gemms(device_type)


def _try_fp32_output(gemm, *args, **kwargs) -> torch.Tensor | None:
    """Run a float32-output GEMM; None (and no more tries) if this torch refuses it."""
    global _FP32_OUTPUT_GEMMS_WORK
    try:
        return gemm(*args, **kwargs)
    except (RuntimeError, TypeError) as exc:  # raised at dispatch, before any launch
        _FP32_OUTPUT_GEMMS_WORK = False
        warnings.warn(f"fused_linear_one_loss: float32-output GEMM refused ({exc}); "
                      "rounding each chunk's product to the input dtype instead", stacklevel=3)
        return None


def _product(a: torch.Tensor, b: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    """``a @ b`` (mm for 2-D, bmm for 3-D operands) as an ``acc`` tensor."""
    mm = torch.mm if a.dim() == 2 else torch.bmm
    if a.dtype == acc:
        return mm(a, b)
    if _fp32_output_gemms(a.device.type):
        result = _try_fp32_output(mm, a, b, out_dtype=acc)
        if result is not None:
            return result
    return mm(a, b).to(acc)


def _accumulate_product(total: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """``total += a @ b`` in place, ``total`` in the accumulation dtype."""
    add = torch.addmm if a.dim() == 2 else torch.baddbmm
    if a.dtype == total.dtype:
        add(total, a, b, out=total)
        return
    if _fp32_output_gemms(a.device.type):
        if _try_fp32_output(add, total, a, b, out_dtype=total.dtype, out=total) is not None:
            return
    if a.device.type == "cpu":
        # A mixed-dtype add on the CPU converts its operand through a temporary as large as
        # ``total`` (TensorIterator's CPU casts): multiply the chunk-sized operands in the
        # accumulator's dtype instead, so the only full-size tensor is ``total`` itself.
        add(total, a.to(total.dtype), b.to(total.dtype), out=total)
        return
    total.add_((torch.mm if a.dim() == 2 else torch.bmm)(a, b))


def _chunk_logits(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
    """Logits (rows, m, V) of one chunk; classes contiguous, as the fused kernels read them.

    h: (rows, H) shared by the heads -> one GEMM against weight viewed (m V, H);
    h: (rows, m, H) per head -> one batched GEMM over the heads.
    """
    m, v, hdim = weight.shape
    if h.dim() == 2:
        w2 = weight.view(m * v, hdim)
        z = torch.mm(h, w2.t()) if bias is None else torch.addmm(bias.view(m * v), h, w2.t())
        return z.view(-1, m, v)
    hb = h.transpose(0, 1)  # (m, rows, H)
    wt = weight.transpose(1, 2)  # (m, H, V)
    z = torch.bmm(hb, wt) if bias is None else torch.baddbmm(bias[:, None, :], hb, wt)
    return z.transpose(0, 1)  # (rows, m, V) view of (m, rows, V)


def _grad_buffers(hidden, weight, n, needs, new, accum_dtype):
    """Empty gradient outputs, (0,) for those not wanted (see the schemas' needs): hidden's,
    weight's and bias's in ``accum_dtype``, the gate's (N x m, written once per row) in the
    compute dtype. ``new(shape, dtype)`` allocates."""
    m, v, hdim = weight.shape
    shapes = (tuple(hidden.shape), (m, v, hdim), (m, v), (n, m))
    dtypes = (accum_dtype, accum_dtype, accum_dtype, compute_dtype(weight.dtype))
    return tuple(new(shape if need else (0,), dtype)
                 for shape, dtype, need in zip(shapes, dtypes, needs, strict=True))


def _add_chunk_gradients(dz, h, weight, rows, grads, needs) -> None:
    """grad_hidden[rows] = dz -> hidden; grad_weight += dz^T h; grad_bias += sum_n dz.

    dz (rows, m, V) in the logits' dtype; h (rows, H) or (rows, m, H). Views of dz made here
    die on return, so the chunk's gradient is freed as soon as the caller drops it.
    """
    grad_h, grad_w, grad_b, _ = grads
    need_h, need_w, need_b, _ = needs
    m, v, hdim = weight.shape
    acc = grad_w.dtype
    if need_b:
        grad_b += dz.sum(0, dtype=acc)
    if h.dim() == 2:  # shared hidden: the heads side by side, one GEMM each way
        dz2 = dz.reshape(-1, m * v)
        if need_h:
            grad_h[rows] = _product(dz2, weight.view(m * v, hdim), acc)
        if need_w:
            _accumulate_product(grad_w.view(m * v, hdim), dz2.t(), h)
    else:  # per-head hidden: batched over the heads
        if need_h:
            grad_h[rows] = _product(dz.transpose(0, 1), weight, acc).transpose(0, 1)
        if need_w:
            _accumulate_product(grad_w, dz.permute(1, 2, 0), h.transpose(0, 1))


def _run_chunks(hidden, weight, bias, gate, target, kl_weight, temperature, detach_teacher,
                ignore_index, chunk_rows, backend, needs, row_weight, accum_dtype):
    """The chunk loop. Returns (loss, ce, ce_ensemble, kl) per row (in the compute dtype) and
    the four gradients (in ``accum_dtype``).

    ``needs`` = which of (hidden, weight, bias, gate) get a gradient; ``row_weight`` None or (N,):
    the gradients are those of ``sum_n row_weight[n] * loss_n`` (of ``sum_n loss_n`` if None).
    """
    n, m = gate.shape
    acc = compute_dtype(weight.dtype)
    kernel = BACKENDS[backend].fused_op
    weight = weight.contiguous()  # one copy at most, not one per chunk
    bias = None if bias is None else bias.contiguous()

    def new(shape, dtype=acc):
        return torch.empty(shape, dtype=dtype, device=weight.device)

    terms = (new((n,)), new((n, m)), new((n,)), new((n, m)))
    grads = _grad_buffers(hidden, weight, n, needs, new, accum_dtype)
    _, grad_w, grad_b, grad_g = grads
    need_g = needs[3]
    grad_w.zero_()
    grad_b.zero_()
    compute_grad = any(needs)
    for start in range(0, n, chunk_rows):
        rows = slice(start, min(start + chunk_rows, n))
        h = hidden[rows]
        z = _chunk_logits(h, weight, bias)
        out = kernel(z, gate[rows], target[rows], kl_weight, temperature, detach_teacher,
                     ignore_index, compute_grad)
        del z
        for buffer, value in zip(terms, out[:4], strict=True):
            buffer[rows] = value
        if not compute_grad:
            continue
        dz, dg = out[4], out[5]  # (rows, m, V) in the logits' dtype, (rows, m) in acc
        del out
        if row_weight is not None:
            w = row_weight[rows]
            dz.mul_(w[:, None, None])  # computed in float32, rounded once to dz's dtype
            dg = dg * w[:, None]
        if need_g:
            grad_g[rows] = dg
        _add_chunk_gradients(dz, h, weight, rows, grads, needs)
        del dz  # before the next chunk's logits exist: two chunk-sized tensors at most
    return terms, grads


def _forward(hidden, weight, bias, gate, target, kl_weight, temperature, detach_teacher,
             ignore_index, reduction, chunk_rows, backend, needs, accum_dtype):
    with_grad = reduction != "none"
    needs = tuple(bool(x) and with_grad for x in needs)
    terms, grads = _run_chunks(hidden, weight, bias, gate, target, kl_weight, temperature,
                               detach_teacher, ignore_index, chunk_rows, backend, needs, None,
                               accum_dtype)
    valid = target != ignore_index
    loss = reduce_rows(terms[0], valid, reduction)
    if reduction == "none":
        loss = loss.clone()  # an operator's outputs must not alias each other
    elif reduction == "mean" and any(needs):
        inv_count = 1.0 / valid.sum().clamp_min(1).to(terms[0].dtype)  # on the device: no sync
        for grad in grads:
            grad.mul_(inv_count)
    return (loss, *terms, *grads)


def _forward_fake(hidden, weight, bias, gate, target, kl_weight, temperature, detach_teacher,
                  ignore_index, reduction, chunk_rows, backend, needs, accum_dtype):
    n, m = gate.shape
    acc = compute_dtype(weight.dtype)

    def new(shape, dtype=acc):
        return weight.new_empty(shape, dtype=dtype)

    with_grad = reduction != "none"
    needs = tuple(bool(x) and with_grad for x in needs)
    loss = new((n,) if reduction == "none" else ())
    return (loss, new((n,)), new((n, m)), new((n,)), new((n, m)),
            *_grad_buffers(hidden, weight, n, needs, new, accum_dtype))


def _backward_op(hidden, weight, bias, gate, target, kl_weight, grad_rows, temperature,
                 detach_teacher, ignore_index, chunk_rows, backend, needs, accum_dtype):
    row_weight = grad_rows.to(compute_dtype(weight.dtype))
    return _run_chunks(hidden, weight, bias, gate, target, kl_weight, temperature,
                       detach_teacher, ignore_index, chunk_rows, backend, tuple(needs),
                       row_weight, accum_dtype)[1]


def _backward_fake(hidden, weight, bias, gate, target, kl_weight, grad_rows, temperature,
                   detach_teacher, ignore_index, chunk_rows, backend, needs, accum_dtype):
    return _grad_buffers(hidden, weight, gate.shape[0], needs,
                         lambda shape, dtype: weight.new_empty(shape, dtype=dtype), accum_dtype)


backward_op = torch.library.custom_op(BACKWARD, _backward_op, mutates_args=(),
                                      schema=BACKWARD_SCHEMA)
torch.library.register_fake(BACKWARD)(_backward_fake)


def _setup_context(ctx, inputs, output):
    (hidden, weight, bias, gate, target, kl_weight, temperature, detach_teacher, ignore_index,
     reduction, chunk_rows, backend, needs, accum_dtype) = inputs
    # Only the loss output is differentiated: the other outputs' gradients stay None instead of
    # zero tensors as large as them (autograd would allocate an m x V x H one for grad_weight).
    ctx.set_materialize_grads(False)
    ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype, gate.dtype)
    ctx.needs = tuple(needs)
    ctx.reduction = reduction
    if reduction == "none":  # backward runs the chunks again with the per-row gradient
        ctx.save_for_backward(hidden, weight, bias, gate, target, kl_weight)
        ctx.options = (temperature, detach_teacher, ignore_index, chunk_rows, backend, needs,
                       accum_dtype)
    else:  # the gradients of the reduced loss, computed in the forward
        ctx.save_for_backward(*output[5:9])


# Elements per block when the CPU scales a gradient into another dtype (4 MiB of float32).
_CPU_CAST_BLOCK = 2**20


def _scaled(grad: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``grad * scale`` rounded once to ``dtype``, with no full-size temporary next to the
    accumulator (at vocabulary scale grad_weight is gigabytes). The scale stays in the compute
    dtype (a bf16 accumulator does not round it)."""
    out = torch.empty_like(grad, dtype=dtype)
    scale = scale.to(compute_dtype(grad.dtype))
    if grad.device.type == "cpu" and grad.dtype != dtype and grad.is_contiguous():
        # The CPU writes a mixed-dtype result through a temporary of the whole output: one
        # block at a time keeps that temporary small.
        for src, dst in zip(grad.view(-1).split(_CPU_CAST_BLOCK),
                            out.view(-1).split(_CPU_CAST_BLOCK), strict=True):
            torch.mul(src, scale, out=dst)
        return out
    return torch.mul(grad, scale, out=out)


def _backward(ctx, grad_loss, *unused_term_grads):
    if grad_loss is None:  # the loss itself was not used: nothing flows back
        return (None,) * 14
    if ctx.reduction == "none":
        hidden, weight, bias, gate, target, kl_weight = ctx.saved_tensors
        grads = backward_op(hidden, weight, bias, gate, target, kl_weight, grad_loss,
                            *ctx.options)
        out = [g.to(dtype) if need else None
               for g, dtype, need in zip(grads, ctx.dtypes, ctx.needs, strict=True)]
    else:
        out = [_scaled(g, grad_loss, dtype) if need else None
               for g, dtype, need in zip(ctx.saved_tensors, ctx.dtypes, ctx.needs, strict=True)]
    return (*out, None, None, None, None, None, None, None, None, None, None)


forward_op = torch.library.custom_op(FORWARD, _forward, mutates_args=(), schema=FORWARD_SCHEMA)
torch.library.register_fake(FORWARD)(_forward_fake)
torch.library.register_autograd(FORWARD, _backward, setup_context=_setup_context)
