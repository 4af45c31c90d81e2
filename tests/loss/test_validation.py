"""Bad input gets a clear error naming the argument (shared by every backend)."""

from __future__ import annotations

import pytest
import torch

from one_fast import ONELoss, one_loss


def good(n=4, m=3, c=5):
    return torch.randn(n, m, c), torch.softmax(torch.randn(n, m), 1), torch.randint(0, c, (n,))


@pytest.mark.parametrize("mutate,exc,match", [
    (lambda z, g, t: (z[0], g, t), ValueError, "logits must be a 3-D"),
    (lambda z, g, t: (z.long(), g, t), TypeError, "logits must be floating"),
    (lambda z, g, t: (z, g[:, :2], t), ValueError, "gate must have shape"),
    (lambda z, g, t: (z, g[0], t), ValueError, "gate must be a 2-D"),
    (lambda z, g, t: (z, g[:3], t), ValueError, "gate must have shape"),
    (lambda z, g, t: (z, (g > 0.3).long(), t), TypeError, "gate must be floating"),
    (lambda z, g, t: (z, g, t[:3]), ValueError, "target must have N = 4"),
    (lambda z, g, t: (z, g, t.view(2, 2)), ValueError, "target must be a 1-D"),
    (lambda z, g, t: (z, g, t.float()), TypeError, "target must hold integer"),
    (lambda z, g, t: (z, g, torch.tensor([0, 1, 5, 2])), ValueError, r"target values .*found 5"),
    (lambda z, g, t: (z, g, torch.tensor([0, -1, 2, 2])), ValueError, r"target values .*found -1"),
])
def test_bad_tensors(mutate, exc, match):
    z, g, t = mutate(*good())
    with pytest.raises(exc, match=match):
        one_loss(z, g, t)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(temperature=0.0), ValueError, "temperature must be finite and > 0"),
    (dict(temperature=-1.0), ValueError, "temperature"),
    (dict(temperature=float("inf")), ValueError, "temperature"),
    (dict(temperature=float("nan")), ValueError, "temperature"),
    (dict(temperature=torch.tensor(3.0)), TypeError, "temperature must be a Python number"),
    (dict(reduction="avg"), ValueError, "reduction must be one of"),
    (dict(backend="cuda-magic"), ValueError, "backend must be 'auto' or one of"),
    (dict(kl_weight=float("nan")), ValueError, "kl_weight"),
    (dict(kl_weight=torch.ones(2)), ValueError, "kl_weight"),
])
def test_bad_options(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        one_loss(*good(), **kwargs)


def test_ignore_index_is_accepted_outside_class_range():
    z, g, _ = good()
    t = torch.tensor([0, -100, 4, -100])
    assert torch.isfinite(one_loss(z, g, t))
    assert torch.isfinite(ONELoss(ignore_index=7)(z, g, torch.tensor([7, 1, 2, 3])))
