"""HandOver keeps each DALI batch until the copy out of it has run (CUDA events, polled
without blocking, all waited for at the end of a pass). The event logic with stand-in events;
the copy itself in tests/data/test_imagenet_loader.py (DALI's CPU mode)."""

from __future__ import annotations

import pytest
import torch

from one_fast.data.imagenet import dali_available

pytestmark = pytest.mark.skipif(not dali_available(), reason="NVIDIA DALI is not installed")


class FakeEvent:
    def __init__(self, log, name):
        self.log, self.name, self.done = log, name, False

    def query(self):
        return self.done

    def synchronize(self):
        self.log.append(f"wait {self.name}")
        self.done = True


class Batch:
    """Stands in for a DALI batch; says when it is released (garbage-collected)."""

    def __init__(self, log, name):
        self.log, self.name = log, name

    def __del__(self):
        self.log.append(f"release {self.name}")


def test_batches_are_held_until_their_copy_has_run():
    from one_fast.data.imagenet.handover import HandOver

    log = []
    hand = HandOver(torch.device("cpu"))
    first, second = FakeEvent(log, "a"), FakeEvent(log, "b")
    hand.keep_until(first, Batch(log, "a"))
    hand.keep_until(second, Batch(log, "b"))
    assert hand.pending == 2 and log == []  # neither copy has run: both held
    first.done = True
    third = FakeEvent(log, "c")
    hand.keep_until(third, Batch(log, "c"))  # a finished: released, in order
    assert log == ["release a"] and hand.pending == 2
    hand.close()  # end of the pass: wait for each remaining copy, then release its batch
    assert log == ["release a", "wait b", "release b", "wait c", "release c"]
    assert hand.pending == 0


def test_a_later_finished_copy_does_not_release_an_earlier_unfinished_one():
    from one_fast.data.imagenet.handover import HandOver

    log = []
    hand = HandOver(torch.device("cpu"))
    slow, fast = FakeEvent(log, "slow"), FakeEvent(log, "fast")
    fast.done = True
    hand.keep_until(slow, Batch(log, "slow"))
    hand.keep_until(fast, Batch(log, "fast"))
    assert log == [] and hand.pending == 2  # released in order only: stream order is FIFO
