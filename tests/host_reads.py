"""Count the operations that read a device tensor's value back to the host (each one a sync).

Reads of CPU tensors are not counted: they wait for nothing.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# Every route by which a value reaches Python: .item()/int()/float()/bool() all end in
# _local_scalar_dense; is_nonzero and equal answer a Python bool from tensor data.
HOST_READS = {"aten::_local_scalar_dense", "aten::is_nonzero", "aten::equal"}


class HostReadCounter(TorchDispatchMode):
    """Within ``with HostReadCounter() as reads:``, ``reads.counts`` counts host reads by op and
    ``reads.ops`` counts every dispatched op (so a test can tell that something did run)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        self.ops[name] += 1
        if name in HOST_READS and any(isinstance(a, torch.Tensor) and a.device.type != "cpu"
                                      for a in args):
            self.counts[name] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.counts.values())
