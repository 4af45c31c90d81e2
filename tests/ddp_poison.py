"""``torchrun ... tests/ddp_poison.py TRAIN_FLAGS``: the trainer with a NaN loss on rank 1 alone,
from its third step on (what a numerical blow-up on one shard looks like)."""

from __future__ import annotations

import os
import sys

from one_fast import train
from one_fast.runs import trainer

POISONED_RANK, FROM_STEP = 1, 3


def _poisoned(config, backend):
    method = _real(config, backend)
    loss = method.loss
    calls = [0]

    def nan_loss(outputs, y, w):
        calls[0] += 1
        if calls[0] >= FROM_STEP:
            outputs = (outputs[0] * float("nan"), *outputs[1:])
        return loss(outputs, y, w)

    method.loss = nan_loss
    return method


_real = trainer.make_method
if int(os.environ.get("RANK", "0")) == POISONED_RANK:
    trainer.make_method = _poisoned

if __name__ == "__main__":
    raise SystemExit(train.main(sys.argv[1:]))
