"""The fused ONE loss as one Triton kernel: gated ensemble, both softmaxes, every CE and KL term,
and the gradients w.r.t. the logits and the gate, in a single launch.

How the kernel works
--------------------
Grid: one program per group of ``ROWS`` rows, ``grid = (cdiv(N, ROWS),)``. A program works on
3-D tiles ``[ROWS, M_PAD, BLOCK_C]`` (rows x branches, padded to a power of two x classes):

* small C (the whole row fits one block, e.g. CIFAR's C = 10 or 100): ``BLOCK_C`` covers C and
  up to ``MAX_ROWS`` rows share a program (a tile of at most ``PACKED_TILE_ELEMS`` elements);
* large C (up to vocabulary size, 262,144 and beyond): ``ROWS = 1`` and the program loops over C
  in blocks of ``BLOCK_C = TILE_ELEMS / M_PAD`` classes.

Pass 1 (always) streams the m branch rows ``z_i`` once, forms the gated ensemble
``z_e = sum_i g_i z_i`` block by block, and keeps online (running-max) softmax statistics:
one running max per branch and for z_e (max(z/T) = max(z)/T, so the T = 1 and T statistics share
it), the sums ``S1 = sum exp(z - max)`` and ``ST = sum exp((z - max)/T)``, and for the KL terms
the rescaled sum ``A_i = sum_c exp((z_e,c - max_e)/T) (z_e,c - z_i,c)``, so that
``E_qe[z_e - z_i] = A_i / ST_e`` and
``KL_i = (E_qe[z_e - z_i] - (max_e - max_i)) / T - log(ST_e / ST_i)``. The target logits
``z_i,y`` are gathered directly. It writes the per-row terms: loss (N,), CE per branch (N, m),
CE of the ensemble (N,), unweighted KL per branch (N, m).

Pass 2 (only when gradients are wanted) streams the branch rows again and, with the statistics
of pass 1, writes ``d loss_n / d z[n]`` for every element and accumulates
``d loss_n / d g_i = sum_c z_i,c dL/dz_e,c`` in registers (formulas in the kernel). Backward then
only scales these by the incoming per-row gradient (``fused_op``).

Precision: all results are formed from differences (z - max, z_e - z_i, max_e - max_i) before
anything large is added, as log_softmax does, so the kernel is at least as accurate as the float32
reference where that matters: CE -> 0 and p_y -> 1 for confident predictions, KL -> 0 for
near-identical branches, the teacher-side KL gradient when q_e is nearly one-hot (tests check
each against float64).

Bytes moved per row (s = bytes per logit element): pass 1 reads ``m C s``; pass 2 reads ``m C s``
again (an L1/L2 hit when a row fits one block) and writes ``m C s`` of gradient: ``3 m C s`` in
all with gradients, ``m C s`` without, plus O(m) for the gate, target and the terms. All
arithmetic is float32 (float64 for float64 logits), whatever the storage dtype.

Rows whose target is ``ignore_index`` read nothing and write zeros; a target outside [0, C) (which
only a compiled or graph-captured step lets through, as validation cannot read values there) makes
that row's loss, terms and gradients NaN, so it is visible rather than silently zero.
``kl_weight`` is read from a device tensor inside the kernel: no host sync, CUDA-graph safe.
"""

from __future__ import annotations

import os
import struct

import torch
import triton
import triton.language as tl

from .fused_op import define_python_op, define_triton_op, row_terms_from_op
from .reference import compute_dtype

# Block sizes, chosen so that the compiled kernel keeps its state in registers (few spills) over
# m = 1..8 and C up to 262,144: `python -m benchmarks.triton_compile_check` reports registers and
# spills per configuration (latest figures in BENCHMARKS.md).
# Elements of one [1, M_PAD, BLOCK_C] tile when C is looped over (one row per program).
TILE_ELEMS = 4096
# Elements of one [ROWS, M_PAD, BLOCK_C] tile when rows are packed: smaller, because the per-row
# statistics are replicated across threads and cost registers quickly.
PACKED_TILE_ELEMS = 1024
# Most rows one program takes when C is small (more rows -> fewer, longer programs).
MAX_ROWS = 8
# Test hook: force BLOCK_C (a power of two) so that the multi-block loop runs on small C.
BLOCK_C_OVERRIDE: int | None = None
# Whether the kernel was built for Triton's CPU interpreter (decided when triton.jit ran).
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def _load_tile(logits_ptr, row_off, br_off, cols, row_br_mask, C, g):
    """Load branch logits and form the ensemble for one block of classes.

    row_off (R,) int64 row offsets, br_off (M_PAD,) int64 branch offsets, cols (BLOCK_C,),
    row_br_mask (R, M_PAD) which (row, branch) pairs to read, g (R, M_PAD) gate (0 on padding).
    Returns zl (R, M_PAD, BLOCK_C) with 0 where not read, ze_raw = sum_i g_i zl_i (R, BLOCK_C),
    and z, ze: the same with -inf in the columns >= C (what the softmax statistics use). The raw
    values keep differences such as z_e - z_i finite (0) in padded columns.
    """
    col_ok = cols < C  # (BLOCK_C,)
    ptrs = logits_ptr + row_off[:, None, None] + br_off[None, :, None] + cols[None, None, :]
    mask = row_br_mask[:, :, None] & col_ok[None, None, :]
    zl = tl.load(ptrs, mask=mask, other=0.0).to(g.dtype)
    ze_raw = tl.sum(g[:, :, None] * zl, axis=1)  # (R, BLOCK_C)
    z = tl.where(col_ok[None, None, :], zl, float("-inf"))
    ze = tl.where(col_ok[None, :], ze_raw, float("-inf"))
    return zl, ze_raw, z, ze


@triton.jit
def _one_loss_kernel(
    logits_ptr, gate_ptr, target_ptr, klw_ptr,
    loss_ptr, ce_ptr, ce_e_ptr, kl_ptr, grad_ptr, grad_gate_ptr,
    N, C, stride_ln, stride_lm, stride_gn, stride_gm, stride_t,
    t_hi, t_lo, ignore_index,
    M: tl.constexpr, M_PAD: tl.constexpr, ROWS: tl.constexpr, BLOCK_C: tl.constexpr,
    ACC: tl.constexpr, DETACH: tl.constexpr, COMPUTE_GRAD: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * ROWS + tl.arange(0, ROWS)  # (R,)
    row_in = rows < N
    br = tl.arange(0, M_PAD)  # (M_PAD,)
    br_ok = br < M
    rows64 = rows.to(tl.int64)  # N * m * C can exceed 2**31: all offsets in int64
    br64 = br.to(tl.int64)

    # Row status: ignored rows contribute nothing; an out-of-range target poisons its row.
    y = tl.load(target_ptr + rows64 * stride_t, mask=row_in, other=ignore_index)  # (R,) int64
    valid = row_in & (y != ignore_index)
    bad = valid & ((y < 0) | (y >= C))
    use = valid & (y >= 0) & (y < C)  # rows that are computed at all
    y_safe = tl.where(use, y, 0)
    rb_mask = use[:, None] & br_ok[None, :]  # (R, M_PAD)

    # T arrives as float32 hi + lo parts so that float64 accumulation sees T to ~48 bits.
    temp = tl.cast(t_hi, ACC) + tl.cast(t_lo, ACC)
    inv_t = 1.0 / temp
    w = tl.load(klw_ptr).to(ACC)  # kl_weight, from the device: no host sync
    g = tl.load(gate_ptr + rows64[:, None] * stride_gn + br64[None, :] * stride_gm,
                mask=rb_mask, other=0.0).to(ACC)  # (R, M_PAD), 0 on padding

    row_off = rows64 * stride_ln  # (R,)
    br_off = br64 * stride_lm  # (M_PAD,)
    # Target logits z_i,y (R, M_PAD) and z_e,y = sum_i g_i z_i,y (R,).
    z_y = tl.load(logits_ptr + row_off[:, None] + br_off[None, :] + y_safe[:, None],
                  mask=rb_mask, other=0.0).to(ACC)
    ze_y = tl.sum(g * z_y, axis=1)

    # ---- pass 1: online softmax statistics over C blocks ---------------------------------
    # Per branch (R, M_PAD): running max mx_i, s1_i = sum exp(z_i - mx_i),
    # sT_i = sum exp((z_i - mx_i)/T). For z_e (R,): mx_e, s1_e, sT_e. And for the KL terms
    # a_i = sum_c exp((z_e,c - mx_e)/T) * (z_e,c - z_i,c), rescaled whenever mx_e grows.
    mx = tl.full([ROWS, M_PAD], float("-inf"), ACC)
    s1 = tl.zeros([ROWS, M_PAD], ACC)
    sT = tl.zeros([ROWS, M_PAD], ACC)
    a = tl.zeros([ROWS, M_PAD], ACC)
    mx_e = tl.full([ROWS], float("-inf"), ACC)
    s1_e = tl.zeros([ROWS], ACC)
    sT_e = tl.zeros([ROWS], ACC)
    for c0 in range(0, C, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        zl, ze_raw, z, ze = _load_tile(logits_ptr, row_off, br_off, cols, rb_mask, C, g)
        # every block holds at least one column < C, so the new maxima are finite
        mx_new = tl.maximum(mx, tl.max(z, axis=2))
        shift = z - mx_new[:, :, None]
        s1 = s1 * tl.exp(mx - mx_new) + tl.sum(tl.exp(shift), axis=2)
        sT = sT * tl.exp((mx - mx_new) * inv_t) + tl.sum(tl.exp(shift * inv_t), axis=2)
        mx = mx_new
        mx_e_new = tl.maximum(mx_e, tl.max(ze, axis=1))
        scale_e = tl.exp((mx_e - mx_e_new) * inv_t)  # (R,)
        u_e = tl.exp((ze - mx_e_new[:, None]) * inv_t)  # (R, BLOCK_C), 0 past C
        s1_e = s1_e * tl.exp(mx_e - mx_e_new) + tl.sum(tl.exp(ze - mx_e_new[:, None]), axis=1)
        sT_e = sT_e * scale_e + tl.sum(u_e, axis=1)
        a = a * scale_e[:, None] + tl.sum(u_e[:, None, :] * (ze_raw[:, None, :] - zl), axis=2)
        mx_e = mx_e_new

    # logsumexp(z) = mx + log s1 and logsumexp(z/T) = mx/T + log sT are never formed: like
    # log_softmax, everything below uses (z - mx) - log s, so that a large mx does not round
    # away a small result (CE -> 0 and p_y -> 1 for confident predictions: the p_y - 1 trap).
    log_s1 = tl.log(s1)  # (R, M_PAD)
    log_sT = tl.log(sT)
    log_s1_e = tl.log(s1_e)  # (R,)
    log_sT_e = tl.log(sT_e)
    # KL_i = sum_c q_e (log q_e - log q_i),  log q_e - log q_i = (z_e - z_i)/T - (lseT_e - lseT_i).
    # Grouped so that only differences meet: E_qe[z_e - z_i] - (mx_e - mx_i), then the log of the
    # sums' ratio. Forming lseT_e - lseT_i from the two log-sum-exps would add rounding of size
    # eps * |max z| / T, which swamps a small KL (near-identical branches; C = 1 gives exactly 0).
    mean_d = a / sT_e[:, None]  # E_qe[z_e - z_i]  (R, M_PAD)
    # (sT_e and sT_i both lie in [1, C]: their ratio is safe, and one log of it is exact to eps)
    kl = (mean_d - (mx_e[:, None] - mx)) * inv_t - tl.log(sT_e[:, None] / sT)
    # CE(z_i, y) = logsumexp(z_i) - z_i,y and CE(z_e, y), grouped the same way
    ce = (mx - z_y) + log_s1
    ce_e = (mx_e - ze_y) + log_s1_e
    ce = tl.where(rb_mask, ce, 0.0)
    kl = tl.where(rb_mask, kl, 0.0)
    ce_e = tl.where(use, ce_e, 0.0)
    wt2 = w * temp * temp
    loss = tl.sum(ce, axis=1) + ce_e + wt2 * tl.sum(kl, axis=1)
    loss = tl.where(bad, float("nan"), loss)
    ce = tl.where(bad[:, None], float("nan"), ce)
    ce_e = tl.where(bad, float("nan"), ce_e)
    kl = tl.where(bad[:, None], float("nan"), kl)

    out_rb = row_in[:, None] & br_ok[None, :]
    rb_idx = rows64[:, None] * M + br64[None, :]  # (R, M_PAD) index into the (N, m) outputs
    tl.store(loss_ptr + rows64, loss, mask=row_in)
    tl.store(ce_e_ptr + rows64, ce_e, mask=row_in)
    tl.store(ce_ptr + rb_idx, ce, mask=out_rb)
    tl.store(kl_ptr + rb_idx, kl, mask=out_rb)

    if COMPUTE_GRAD:
        # ---- pass 2: gradients ------------------------------------------------------------
        # p_i = softmax(z_i), q_i = softmax(z_i/T), p_e, q_e likewise, w = kl_weight:
        #   dL/dz_e = (p_e - onehot_y)
        #             + [not DETACH] w T q_e * sum_i (log q_e - log q_i - KL_i)
        #           = (p_e - onehot_y) + [not DETACH] w q_e * sum_i (d_i - E_qe[d_i]),
        #     d_i = z_e - z_i: the log-sum-exps cancel exactly, so no large terms cancel here
        #     (they would when q_e is nearly one-hot and the logits are large).
        #   dL/dz_i = (p_i - onehot_y) + w T (q_i - q_e) + g_i dL/dz_e
        #   dL/dg_i = sum_c z_i,c dL/dz_e,c = sum_c (z_i,c - mx_i) dL/dz_e,c
        #     (sum_c dL/dz_e,c = 0: centring z_i spares the sum a cancellation of size |max z|)
        # p - onehot and q_i - q_e are formed in ACC from ACC probabilities: never from rounded
        # storage values (the cancellation traps at p_y -> 1 and q_i -> q_e).
        wt = w * temp
        mean_d_sum = tl.sum(tl.where(rb_mask, mean_d, 0.0), axis=1)  # (R,) sum_i E_qe[d_i]
        gacc = tl.zeros([ROWS, M_PAD], ACC)
        # rows written: every in-bounds row; ignored rows get 0, bad rows NaN
        fill = tl.where(bad, float("nan"), 0.0)  # (R,)
        grad_row_off = rows64 * M * C  # the gradient output is contiguous (N, m, C)
        for c0 in range(0, C, BLOCK_C):
            cols = c0 + tl.arange(0, BLOCK_C)
            zl, ze_raw, z, ze = _load_tile(logits_ptr, row_off, br_off, cols, rb_mask, C, g)
            onehot = (cols[None, :] == y_safe[:, None]).to(ACC)  # (R, BLOCK_C)
            sh = z - mx[:, :, None]  # (R, M_PAD, BLOCK_C), -inf past C
            p = tl.exp(sh - log_s1[:, :, None])  # softmax(z_i), 0 past C
            q = tl.exp(sh * inv_t - log_sT[:, :, None])  # softmax(z_i / T)
            sh_e = ze - mx_e[:, None]  # (R, BLOCK_C)
            p_e = tl.exp(sh_e - log_s1_e[:, None])
            q_e = tl.exp(sh_e * inv_t - log_sT_e[:, None])
            dz_e = p_e - onehot
            if not DETACH:
                # sum over real branches of d_i = z_e - z_i, from the raw (finite) logits
                d = tl.where(rb_mask[:, :, None], ze_raw[:, None, :] - zl, 0.0)
                dz_e += w * q_e * (tl.sum(d, axis=1) - mean_d_sum[:, None])
            dz = (p - onehot[:, None, :]) + wt * (q - q_e[:, None, :]) \
                + g[:, :, None] * dz_e[:, None, :]
            dz = tl.where(use[:, None, None], dz, fill[:, None, None])
            # past C: zl - mx is finite and dz_e = 0
            gacc += tl.sum((zl - mx[:, :, None]) * dz_e[:, None, :], axis=2)
            col_ok = cols < C
            out_mask = out_rb[:, :, None] & col_ok[None, None, :]
            gptrs = grad_ptr + grad_row_off[:, None, None] + (br64 * C)[None, :, None] \
                + cols[None, None, :]
            tl.store(gptrs, dz.to(grad_ptr.dtype.element_ty), mask=out_mask)
        gacc = tl.where(use[:, None], gacc, fill[:, None])
        tl.store(grad_gate_ptr + rb_idx, gacc.to(grad_gate_ptr.dtype.element_ty), mask=out_rb)


def _new_output(shape, dtype, device) -> torch.Tensor:
    """Allocate an output buffer (through ``torch.empty``, which tests replace to NaN-fill it)."""
    return torch.empty(shape, dtype=dtype, device=device)


def _launch_config(n: int, m: int, c: int, float64: bool = False
                   ) -> tuple[int, int, int, int]:
    """(M_PAD, ROWS, BLOCK_C, num_warps) for an (n, m, c) problem (``float64``: accumulation)."""
    m_pad = triton.next_power_of_2(m)
    block_c = max(16, triton.next_power_of_2(c))
    if m_pad * block_c > TILE_ELEMS:  # large C: one row per program, loop over C blocks
        block_c = max(16, TILE_ELEMS // m_pad)
    if BLOCK_C_OVERRIDE is not None:
        block_c = BLOCK_C_OVERRIDE
    rows = 1
    if block_c >= c:  # the whole row in one block: pack several rows into a program
        rows = min(MAX_ROWS, PACKED_TILE_ELEMS // (m_pad * block_c), triton.next_power_of_2(n))
        rows = max(1, rows)
    tile = rows * m_pad * block_c
    num_warps = 4 if tile < 1024 else 16 if tile >= 4096 and m_pad >= 8 else 8
    if float64:  # 16 warps cap a thread at 128 registers, too few for float64 state (it spills)
        num_warps = min(num_warps, 8)
    return m_pad, rows, block_c, num_warps


def _split_float32(value: float) -> tuple[float, float]:
    """``value`` as float32 hi + lo parts (hi = value rounded to float32), on the host: the op
    is also traced on fake tensors, where a tensor's value cannot be read."""
    hi = struct.unpack("f", struct.pack("f", value))[0]
    return hi, value - hi


def impl(logits: torch.Tensor, gate: torch.Tensor, target: torch.Tensor,
         kl_weight: torch.Tensor, temperature: float, detach_teacher: bool, ignore_index: int,
         compute_grad: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                      torch.Tensor, torch.Tensor]:
    """Launch the fused kernel; returns the six tensors of ``fused_op.FUSED_SCHEMA``.

    Traceable (torch.library.triton_op): torch operators and the wrapped kernel launch only,
    nothing read from a tensor's values.
    """
    n, m, c = logits.shape
    if c > 1 and logits.stride(2) != 1:
        logits = logits.contiguous()  # the kernel reads rows of classes contiguously
    device = logits.device
    acc = compute_dtype(logits.dtype)
    loss = _new_output((n,), acc, device)
    ce = _new_output((n, m), acc, device)
    ce_e = _new_output((n,), acc, device)
    kl = _new_output((n, m), acc, device)
    grad = _new_output((n, m, c) if compute_grad else (0,), logits.dtype, device)
    grad_gate = _new_output((n, m) if compute_grad else (0,), acc, device)
    if n == 0:
        return loss, ce, ce_e, kl, grad, grad_gate
    m_pad, rows, block_c, num_warps = _launch_config(n, m, c, acc == torch.float64)
    t_hi, t_lo = _split_float32(float(temperature))
    kl_weight = kl_weight.reshape(1)
    grid = (triton.cdiv(n, rows),)
    if INTERPRETED:
        # The interpreter runs the kernel as Python; triton 3.6's turns an int argument into a
        # one-element array, which range() cannot take with a NumPy where int() of such an
        # array is an error (2.4 here: "only 0-dimensional arrays can be converted to Python
        # scalars"; triton 3.9 squeezes it first). So C goes in as a constexpr object, which
        # the interpreter passes through unchanged. Not traceable by wrap_triton either.
        launch = _one_loss_kernel[grid]
        c_arg = tl.constexpr(c)
    else:
        launch = torch.library.wrap_triton(_one_loss_kernel)[grid]
        c_arg = c
    args = (
        logits, gate, target, kl_weight, loss, ce, ce_e, kl,
        grad if compute_grad else loss, grad_gate if compute_grad else loss,
        n, c_arg, logits.stride(0), logits.stride(1), gate.stride(0), gate.stride(1),
        target.stride(0), t_hi, t_lo, ignore_index,
    )
    meta = dict(M=m, M_PAD=m_pad, ROWS=rows, BLOCK_C=block_c,
                ACC=tl.float64 if acc == torch.float64 else tl.float32,
                DETACH=bool(detach_teacher), COMPUTE_GRAD=bool(compute_grad),
                num_warps=num_warps)
    if device.type == "cuda":
        with torch.cuda.device(device):
            launch(*args, **meta)
    else:
        launch(*args, **meta)
    return loss, ce, ce_e, kl, grad, grad_gate


QUALNAME = "one_fast::triton_one_loss"
# Compiled kernels are registered with torch.library.triton_op, so torch.compile traces into the
# launch and Inductor (and AOTInductor) see the kernel itself; the interpreter's kernel is a
# Python function that wrap_triton cannot trace, so there the op is an opaque custom op (with
# the same fake implementation and backward).
op = define_python_op(QUALNAME, impl) if INTERPRETED else define_triton_op(QUALNAME, impl)
row_terms = row_terms_from_op(op)
