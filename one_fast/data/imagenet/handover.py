"""DALI -> torch: each output batch copied into a torch tensor by the DALI PyTorch plugin.

A tensor that merely wraps DALI's buffer (``torch.from_dlpack``) leaves two orderings to
chance: nothing makes the training step's kernels, queued on torch's stream, run before DALI
reuses that buffer for a later batch, since DALI frees it (stream-ordered on its own streams)
as soon as the Python object is dropped -- which the training loop does right after queuing
the step. So :class:`HandOver` copies with the plugin's ``feed_ndarray`` on torch's current
stream (DALI orders the copy after its own work on the batch) into memory from torch's
caching allocator (which is stream-aware: nothing reuses it before the work queued on that
stream has run), and keeps each DALI batch alive until a CUDA event recorded after its copy
has completed (polled without blocking; waited for at the end of a pass). On the CPU (DALI's
CPU mode) the copy is synchronous and nothing needs to be kept.
"""

from __future__ import annotations

from collections import deque

import torch


class HandOver:
    """Copies DALI output batches into new torch tensors on ``device``.

    Args:
        device: where the batches go (CUDA for DALI's mixed mode, else the CPU).
    """

    def __init__(self, device: torch.device) -> None:
        from nvidia.dali.plugin.pytorch import feed_ndarray, to_torch_type

        self.device = device
        self._feed, self._torch_type = feed_ndarray, to_torch_type
        self._pending: deque[tuple[object, tuple[object, ...]]] = deque()

    def __call__(self, batch) -> torch.Tensor:
        """``batch`` (a DALI TensorList of equal-shaped samples) as a new torch tensor."""
        dense = batch.as_tensor()
        out = torch.empty(dense.shape(), dtype=self._torch_type[dense.dtype],
                          device=self.device)
        if self.device.type != "cuda":
            self._feed(dense, out)
            return out
        with torch.cuda.device(self.device):
            stream = torch.cuda.current_stream(self.device)
            self._feed(dense, out, cuda_stream=stream)
            copied = torch.cuda.Event()
            copied.record(stream)
        self.keep_until(copied, batch, dense)
        return out

    def keep_until(self, event, *objects) -> None:
        """Hold ``objects`` until ``event`` (anything with ``query()`` and ``synchronize()``)
        has completed; release those whose events have."""
        self._pending.append((event, objects))
        while self._pending and self._pending[0][0].query():
            self._pending.popleft()

    @property
    def pending(self) -> int:
        """DALI batches still held for a copy that may not have run."""
        return len(self._pending)

    def close(self) -> None:
        """Wait for every outstanding copy, then release its DALI batch (end of a pass)."""
        while self._pending:
            self._pending[0][0].synchronize()
            self._pending.popleft()
