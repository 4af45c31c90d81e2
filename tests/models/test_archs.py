"""Every arch: shapes, batched == per-branch (outputs, gradients, BatchNorm state), training."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from one_fast import one_loss
from one_fast.models import BranchedNetwork, create_model

from .arch_cases import ARCH_NAMES, SMALL, bn_state, small_model, train_step


def gated_loss(logits, gate, y):
    """Σ_i CE(z_i, y) + CE(Σ_i g_i z_i, y): reaches every parameter (gate included), any dtype."""
    m = logits.shape[1]
    branch = sum(F.cross_entropy(logits[:, i], y) for i in range(m))
    return branch + F.cross_entropy((gate.unsqueeze(-1) * logits).sum(1), y)


def assert_paths_agree(model, x, y, tol):
    twin = copy.deepcopy(model)
    got = train_step(model, x, y, True, gated_loss)
    want = train_step(twin, x, y, False, gated_loss)
    torch.testing.assert_close(got[0], want[0], **tol)
    torch.testing.assert_close(got[1], want[1], **tol)
    assert got[2].keys() == want[2].keys() == dict(model.named_parameters()).keys()
    for part in (2, 3):
        for k in want[part]:
            torch.testing.assert_close(got[part][k], want[part][k], **tol,
                                       msg=lambda s, k=k: f"{k}: {s}")
    return got


@pytest.mark.parametrize("m", [1, 2, 3])
@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_batched_matches_per_branch_float64(arch, m):
    """A train step batched and branch by branch: same logits, gate, gradients, BN stats."""
    model = small_model(arch, m).double()
    fresh = bn_state(model)
    size = SMALL[arch][1]
    x = torch.randn(3, 3, size, size, dtype=torch.float64)
    y = torch.randint(0, 5, (3,))
    got = assert_paths_agree(model, x, y, dict(rtol=1e-10, atol=1e-12))
    assert got[0].shape == (3, m, 5) and got[1].shape == (3, m)
    # Every gradient is really there, except gate_fc.bias: BatchNorm1d right after it removes
    # any constant, so its gradient is 0 up to rounding.
    dead = [k for k, g in got[2].items() if g.abs().max() < 1e-9 and k != "gate_fc.bias"]
    assert not dead, f"no gradient reached {dead}"
    stats = [k for k in fresh if "running_mean" in k]
    assert stats and all(not torch.equal(fresh[k], got[3][k]) for k in stats)


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_batched_matches_per_branch_float32_unshared(arch):
    """float32, nothing shared (share_stem=False): logits, gate and BN state agree to float32
    rounding in a train step.

    Gradients are compared in float64 above, not here: a ReLU input within float32 rounding of
    0 may fall on either side in the two paths, and one such flip (a 9.8e-7 pre-activation seen
    as 0.0 in ResNeXt, measured) moves a whole upstream gradient entry, so float32 gradients can
    legitimately differ by far more than rounding.
    """
    model = small_model(arch, 3, share_stem=False, shared_stages=0)
    twin = copy.deepcopy(model)
    size = SMALL[arch][1]
    x, y = torch.randn(3, 3, size, size), torch.randint(0, 5, (3,))
    got = train_step(model, x, y, True, gated_loss)
    want = train_step(twin, x, y, False, gated_loss)
    tol = dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got[0], want[0], **tol)
    torch.testing.assert_close(got[1], want[1], **tol)
    for k in want[3]:
        torch.testing.assert_close(got[3][k], want[3][k], **tol, msg=lambda s, k=k: f"{k}: {s}")


@pytest.mark.parametrize("arch", ["resnet", "wrn", "densenet_bc", "resnext50_32x4d"])
def test_less_shared_trunks(arch):
    """shared_stages=1: the first branched stage takes the shared input mid-network."""
    model = small_model(arch, 2, shared_stages=1).double()
    size = SMALL[arch][1]
    x = torch.randn(3, 3, size, size, dtype=torch.float64)
    assert_paths_agree(model, x, torch.randint(0, 5, (3,)), dict(rtol=1e-10, atol=1e-12))


@pytest.mark.slow
def test_full_resnet18_paths_agree_at_64px():
    """The real ResNet-18 (not narrowed), m = 2, 64x64 images, eval mode, float32."""
    model = create_model("resnet18", num_classes=10, num_branches=2).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits, gate = model(x)
        model.batched = False
        ref, ref_gate = model(x)
    assert logits.shape == (2, 2, 10) and gate.shape == (2, 2)
    torch.testing.assert_close(logits, ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gate, ref_gate)


def test_wrn_dropout_is_active_in_training_only():
    model = small_model("wrn", 2, dropout=0.5)
    x = torch.randn(2, 3, 16, 16)
    model.train()
    assert not torch.equal(model(x)[0], model(x)[0])
    model.eval()
    with torch.no_grad():
        a = model(x)[0]
        model.batched = False
        b = model(x)[0]
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_densenet_channels_last():
    """Per-branch concatenation is layout-agnostic: channels_last gives the same logits."""
    model = small_model("densenet_bc", 3).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        want = model(x)[0]
        model = model.to(memory_format=torch.channels_last)
        got = model(x.to(memory_format=torch.channels_last))[0]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_trains_a_few_steps(arch):
    """ONE loss + SGD on one fixed batch: finite loss that goes down."""
    model = small_model(arch, 3)
    assert isinstance(model, BranchedNetwork)
    size = SMALL[arch][1]
    x, y = torch.randn(6, 3, size, size), torch.randint(0, 5, (6,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(4):
        logits, gate = model(x)
        loss = one_loss(logits, gate, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0], losses
