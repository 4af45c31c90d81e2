"""The collectives that keep DDP ranks in step, on two gloo processes (CPU)."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from one_fast.engine import distributed


def _worker(rank: int, init_file: str, results) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        net = nn.BatchNorm1d(3)
        net.running_mean.fill_(float(rank + 1))
        distributed.broadcast_buffers(net)
        # Rank 1 saw a non-finite loss at step 4, rank 0 none; their losses differ.
        means, bad = distributed.reduce_totals({"loss": 1.0 + rank, "kl": 2.0 * rank},
                                               4 if rank == 1 else distributed.NO_BAD_STEP,
                                               torch.device("cpu"))
        results[rank] = (net.running_mean.tolist(), means, bad,
                         distributed.broadcast_object(f"rank {rank}"),
                         distributed.gather_objects(rank * 10))
    finally:
        dist.destroy_process_group()


def test_every_rank_sees_rank_0s_buffers_the_mean_loss_and_the_first_bad_step(tmp_path):
    results = mp.Manager().dict()
    mp.spawn(_worker, args=(str(tmp_path / "init"), results), nprocs=2)
    for rank in (0, 1):
        buffers, means, bad, told, gathered = results[rank]
        assert buffers == [1.0, 1.0, 1.0]
        assert means == {"loss": 1.5, "kl": 1.0} and bad == 4
        assert told == "rank 0" and gathered == [0, 10]


def test_alone_nothing_changes():
    net = nn.BatchNorm1d(2)
    distributed.broadcast_buffers(net)
    assert distributed.reduce_totals({"loss": 3.0}, -1, torch.device("cpu")) == ({"loss": 3.0},
                                                                                -1)
    assert distributed.broadcast_object("x") == "x" and distributed.gather_objects(1) == [1]
