"""Which tensor belongs to which branch: independence of unshared members, and each branch
cut out as the plain m = 1 network."""

from __future__ import annotations

import pytest
import torch

from .arch_cases import ARCH_NAMES, SMALL, small_model


def images(arch, n=3):
    size = SMALL[arch][1]
    return torch.randn(n, 3, size, size)


def warm_up(model, x):
    """One train-mode forward so BatchNorm running statistics differ from their init."""
    model.train()
    with torch.no_grad():
        model(x)
    return model.eval()


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_unshared_members_are_independent(arch):
    """share_stem=False, no gate: every tensor belongs to the branches, and changing member
    1's chunk of every parameter changes member 1's output only (train and eval mode)."""
    model = small_model(arch, 3, share_stem=False, shared_stages=0, gate=False)
    owners = {model.tensor_owner(name) for name in model.state_dict()}
    assert owners == {"branches"}
    x = images(arch)
    for mode in ("train", "eval"):
        getattr(model, mode)()
        with torch.no_grad():
            before = model(x)[0]
            saved = {k: p.clone() for k, p in model.named_parameters()}
            for p in model.parameters():
                chunk = p.shape[0] // 3
                p[chunk:2 * chunk].add_(torch.randn_like(p[chunk:2 * chunk]) * 0.1)
            after = model(x)[0]
            for k, p in model.named_parameters():
                p.copy_(saved[k])
        assert torch.equal(before[:, 0], after[:, 0]) and torch.equal(before[:, 2], after[:, 2])
        assert not torch.allclose(before[:, 1], after[:, 1])


def test_shared_network_owners():
    model = small_model("wrn", 3)
    owners = {name: model.tensor_owner(name) for name in model.state_dict()}
    assert owners["stem.conv.weight"] == "trunk" and owners["trunk.0.conv1.weight"] == "trunk"
    assert owners["gate_fc.weight"] == "gate" and owners["classifier.weight"] == "branches"
    assert owners["branches.0.bn1.running_mean"] == "branches"
    with pytest.raises(KeyError, match="'nope.weight' is not a tensor"):
        model.tensor_owner("nope.weight")


@pytest.mark.parametrize("share_stem", [True, False])
@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_branch_state_dict_is_the_plain_network(arch, share_stem):
    """Branch i's slice loads strictly into the m = 1 network, which then computes exactly
    branch i's logits (eval mode)."""
    options = dict(share_stem=share_stem) if share_stem else dict(share_stem=False,
                                                                    shared_stages=0)
    model = small_model(arch, 3, **options)
    x = images(arch)
    warm_up(model, x)
    plain = small_model(arch, 1, **options).eval()
    with torch.no_grad():
        logits = model(x)[0]
        for i in range(3):
            plain.load_state_dict(model.branch_state_dict(i), strict=True)
            torch.testing.assert_close(plain(x)[0][:, 0], logits[:, i], rtol=1e-5, atol=1e-6)


def test_branch_state_dict_bad_index():
    with pytest.raises(ValueError, match=r"branch index must be in 0\.\.2, got 3"):
        small_model("resnet", 3).branch_state_dict(3)
