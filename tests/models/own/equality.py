"""The check every wrapped model gets: its batched branches equal the loop, in float64."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch

from one_fast.models import OwnBranchedNetwork


def loss_of(logits: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """A scalar that reaches every logit and gate value with a different weight."""
    weights = torch.linspace(-1, 1, logits.numel(), dtype=logits.dtype).view_as(logits)
    return (weights * logits).sum() + (logits.square().sum() + gate.cos().sum()) / 7


def assert_batched_equals_loop(batched: OwnBranchedNetwork, images: Callable[[], torch.Tensor],
                               training: bool) -> None:
    """vmap over the stacked heads == one branch after another: outputs, every gradient and
    every buffer (BatchNorm running statistics and counters) after a step.

    Train-mode forwards first bring the statistics near the data's, so that eval mode reads
    real ones (and the gate's ReLU is not dead on the test batch).
    """
    with torch.no_grad():
        for _ in range(40):
            batched.train()(images())
    batched.train(training)
    before = {k: t.clone() for k, t in batched.named_buffers()}
    looped = copy.deepcopy(batched)
    looped.batched = False
    x = images()
    out_b, out_l = batched(x), looped(x)
    m = batched.num_branches
    assert out_b[0].shape[:2] == (x.shape[0], m) and out_b[1].shape == (x.shape[0], m)
    for got, expected in zip(out_b, out_l, strict=True):
        torch.testing.assert_close(got, expected)
    loss_of(*out_b).backward()
    loss_of(*out_l).backward()
    for (key, p), q in zip(batched.named_parameters(), looped.parameters(), strict=True):
        assert p.grad is not None and p.grad.abs().sum() > 0, key
        torch.testing.assert_close(p.grad, q.grad, msg=key)
    statistics = moved = 0
    for (key, a), b in zip(batched.named_buffers(), looped.buffers(), strict=True):
        torch.testing.assert_close(a, b, msg=key)
        if key.startswith("branches") and key.endswith("running_mean"):
            statistics += 1
            moved += not torch.equal(a, before[key])
    assert moved == (statistics if training else 0)  # every branch BatchNorm moved in train
