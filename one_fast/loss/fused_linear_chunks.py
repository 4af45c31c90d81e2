"""How many rows the fused linear + ONE loss processes at a time (the chunk-size rule).

A chunk of ``rows`` rows holds its m heads' logits and their gradient, ``2 * rows * m * V * s``
bytes (s = bytes per element of the logits' dtype), and each chunk reads and writes the float32
``grad_weight`` accumulator (m V H elements) once more. So chunks should be small for memory and
large for time. The rule:

    full   = N * m * V * s                       bytes of the materialised logits
    target = clamp(full / MIN_CHUNKS, MIN_CHUNK_BYTES, MAX_CHUNK_BYTES)
    rows   = min(N, largest power of two with rows * m * V * s <= target), at least 1

* ``MIN_CHUNKS`` = 8: the logits live in at least 8 pieces, so the chunk's logits and gradient
  together stay at or below a quarter of what materialising the logits and their gradient costs
  (for problems larger than 8 x ``MIN_CHUNK_BYTES``);
* ``MIN_CHUNK_BYTES`` = 32 MiB: below this, splitting saves little memory and only adds
  per-chunk launches and accumulator passes (small problems run in one or a few chunks);
* ``MAX_CHUNK_BYTES`` = 2 GiB: bounds the extra memory at vocabulary scale. At (N, H, m, V) =
  (16384, 4096, 4, 131072) in bf16 it gives 2048-row chunks: the per-chunk grad_weight GEMM then
  has K = 2048, i.e. 2048 / 4 = 512 FLOP per byte of float32 accumulator traffic, above an
  H100's ~260 FLOP/B ridge, so the accumulator passes stay hidden behind the matrix products.

Power-of-two row counts keep GEMM tiles aligned. The rule reads shapes only (no tensor values),
so a compiled or CUDA-graph-captured step sees a fixed chunk count.
"""

from __future__ import annotations

import torch

MIN_CHUNKS = 8
MIN_CHUNK_BYTES = 32 * 2**20
MAX_CHUNK_BYTES = 2 * 2**30


def auto_chunk_rows(n: int, num_heads: int, num_classes: int, dtype: torch.dtype) -> int:
    """Rows per chunk for N rows of ``num_heads`` x ``num_classes`` logits of ``dtype``.

    Args:
        n: rows (tokens) N.
        num_heads: heads m.
        num_classes: classes (vocabulary) V per head.
        dtype: the logits' dtype (that of hidden and weight).

    Returns:
        A row count in [1, max(N, 1)] following the rule in this module's docstring.
    """
    n = int(n)  # under dynamic shapes: specialise on N (the rule needs a concrete count)
    row_bytes = max(1, num_heads * num_classes * torch.empty((), dtype=dtype).element_size())
    target = min(max(n * row_bytes // MIN_CHUNKS, MIN_CHUNK_BYTES), MAX_CHUNK_BYTES)
    fit = max(1, target // row_bytes)
    rows = 1 << (fit.bit_length() - 1)  # largest power of two <= fit
    return max(1, min(n, rows))
