"""The CL-ILR tree and the OKDDip network against winycg/MCL-OKD's models and their own
per-branch loops, in float64: outputs, every gradient (ILR's rescaled ones included), BatchNorm
buffers, parameter counts."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from one_fast.models import CLILRResNet, OKDDipResNet, create_model

from .mcl_okd_reference import (
    BasicBlock,
    Bottleneck,
    CLILRResNetReference,
    OKDDipResNetReference,
)

BLOCK_NAMES = {"shortcut_conv": "downsample.0", "shortcut_bn": "downsample.1"}


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def _block_key(rest):
    """'2.shortcut_bn.weight' -> '2.downsample.1.weight'."""
    index, module, leaf = rest.split(".", 2)
    return f"{index}.{BLOCK_NAMES.get(module, module)}.{leaf}"


def correspondence(model, n):
    """(our state_dict key, copies, index, the reference's key) for every tensor slice."""
    pairs = []
    m = model.num_branches
    for name in model.state_dict():
        root, rest = name.split(".", 1)
        if name.endswith("num_batches_tracked"):
            continue
        if root == "stem":
            pairs.append((name, 1, 0, {"conv": "conv1", "bn": "bn1"}[rest.split(".")[0]]
                          + "." + rest.split(".", 1)[1]))
        elif root == "trunk":
            k = int(rest.split(".")[0])
            layer = "layer1" if k < n else "layer2"
            tail = rest.split(".", 1)[1]
            pairs.append((name, 1, 0, f"{layer}.{_block_key(f'{k % n}.{tail}')}"))
        elif root == "pairs":
            for g in range(model.num_pairs):
                pairs.append((name, model.num_pairs, g, f"layer2_{g}.{_block_key(rest)}"))
        elif root == "branches":
            for i in range(m):
                pairs.append((name, m, i, f"layer3_{i}.{_block_key(rest)}"))
        elif root == "classifier":
            for i in range(m):
                pairs.append((name, m, i, f"classifier_{i}.{rest}"))
        elif root in ("query", "key"):
            pairs.append((name, 1, 0, f"{root}_weight.{rest}"))
        else:
            raise AssertionError(name)
    return pairs


def chunk(tensor, copies, index):
    if copies == 1:
        return tensor
    if tensor.dim() == 2 and tensor.shape[0] == copies:  # classifier bias (m, K)
        return tensor[index]
    if tensor.dim() == 3:  # classifier weight (m, K, D)
        return tensor[index]
    size = tensor.shape[0] // copies
    return tensor.narrow(0, index * size, size)


def load_into_reference(model, reference, n):
    ref_state = reference.state_dict()
    mapping = correspondence(model, n)
    ours = model.state_dict()
    for name, copies, index, ref_name in mapping:
        value = chunk(ours[name], copies, index)
        assert ref_state[ref_name].shape == value.shape, (name, ref_name)
        ref_state[ref_name] = value.clone()
    assert {r for *_, r in mapping} == {k for k in ref_state if "num_batches" not in k}
    reference.load_state_dict(ref_state)
    return mapping


def assert_same_tensors(model, reference, mapping, what):
    ours = dict(model.named_parameters()) if what == "grad" else model.state_dict()
    theirs = dict(reference.named_parameters()) if what == "grad" else reference.state_dict()
    for name, copies, index, ref_name in mapping:
        if name not in ours:
            continue
        a = ours[name].grad if what == "grad" else ours[name]
        b = theirs[ref_name].grad if what == "grad" else theirs[ref_name]
        torch.testing.assert_close(chunk(a, copies, index), b, rtol=1e-9, atol=1e-11,
                                   msg=lambda s, n=name, r=ref_name: f"{n} vs {r}: {s}")


def _images(n=6, seed=0):
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64)


REFERENCES = {"cl_ilr": CLILRResNetReference, "okddip": OKDDipResNetReference}


def _with_reference(layout, m, block, depth):
    """Our network of ``layout`` in float64 train mode, the reference code's with its weights."""
    torch.manual_seed(m)
    n = (depth - 2) // (6 if block == "basic" else 9)
    model = create_model("resnet", num_classes=5, num_branches=m, layout=layout, depth=depth,
                         block=block).double().train()
    ref_block = BasicBlock if block == "basic" else Bottleneck
    reference = REFERENCES[layout](ref_block, [n, n, n], number_net=m,
                                   num_classes=5).double().train()
    return model, reference, load_into_reference(model, reference, n)


@pytest.mark.parametrize("m", [3, 4])
@pytest.mark.parametrize("block, depth", [("basic", 14), ("bottleneck", 11)])
def test_cl_ilr_equals_the_reference_network(m, block, depth):
    model, reference, mapping = _with_reference("cl_ilr", m, block, depth)
    x = _images()
    weights = torch.randn(6, m, 5, dtype=torch.float64)
    logits, gate = model(x)
    ref_logits = torch.stack(reference(x), 1)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gate, torch.full((6, m), 1.0 / m, dtype=torch.float64))
    (logits * weights).sum().backward()
    (ref_logits * weights).sum().backward()
    assert_same_tensors(model, reference, mapping, "grad")  # ILR's divisions included
    assert_same_tensors(model, reference, mapping, "state")  # BatchNorm running statistics


@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("block, depth", [("basic", 14), ("bottleneck", 11)])
def test_okddip_equals_the_reference_network(m, block, depth):
    model, reference, mapping = _with_reference("okddip", m, block, depth)
    x = _images()
    logits, gate, targets = model.forward_with_targets(x)
    pro, x_m, leader = reference(x)
    torch.testing.assert_close(logits[:, :m - 1], pro.transpose(1, 2), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(targets, x_m.transpose(1, 2), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(logits[:, m - 1], leader, rtol=1e-10, atol=1e-12)
    w1, w2 = torch.randn(2, 6, m - 1, 5, dtype=torch.float64)
    ((logits[:, :m - 1] * w1).sum() + (targets * w2).sum() + logits[:, -1].square().sum()
     ).backward()
    ((pro.transpose(1, 2) * w1).sum() + (x_m.transpose(1, 2) * w2).sum()
     + leader.square().sum()).backward()
    assert_same_tensors(model, reference, mapping, "grad")
    assert_same_tensors(model, reference, mapping, "state")


@pytest.mark.parametrize("layout, reference_cls",
                         [("cl_ilr", CLILRResNetReference), ("okddip", OKDDipResNetReference)])
@pytest.mark.parametrize("depth, block, ref_block, n",
                         [(32, "basic", BasicBlock, 5), (110, "bottleneck", Bottleneck, 12)])
def test_parameter_counts_at_m4_equal_the_reference_models(layout, reference_cls, depth, block,
                                                           ref_block, n):
    with torch.device("meta"):
        ours = create_model("resnet", num_classes=100, num_branches=4, layout=layout,
                            depth=depth, block=block)
        theirs = reference_cls(ref_block, [n, n, n], number_net=4, num_classes=100)
    assert n_params(ours) == n_params(theirs)


def test_mcl_okds_resnet110_is_the_bottleneck_110():
    with torch.device("meta"):
        plain = create_model("resnet", num_classes=100, num_branches=1, depth=110,
                             block="bottleneck")
    assert n_params(plain) == 1_170_868  # its 1.17M


def _batched_vs_loop(model, forward):
    loop = copy.deepcopy(model)
    loop.batched = False
    x = _images(seed=3)
    out_b, out_l = forward(model, x), forward(loop, x)
    for a, b in zip(out_b, out_l, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    weights = [torch.randn_like(t) for t in out_b]
    sum((a * w).sum() for a, w in zip(out_b, weights, strict=True)).backward()
    sum((a * w).sum() for a, w in zip(out_l, weights, strict=True)).backward()
    for (name, p), q in zip(model.named_parameters(), loop.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-9, atol=1e-11, msg=name)
    for (name, a), b in zip(model.state_dict().items(), loop.state_dict().values(),
                            strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("m", [1, 2, 5])
def test_cl_ilr_batched_equals_its_per_branch_loop(m):
    torch.manual_seed(0)
    model = CLILRResNet(depth=8, num_classes=4, num_branches=m).double().train()
    _batched_vs_loop(model, lambda net, x: net(x)[:1])


def test_cl_ilr_rescales_the_shared_gradients():
    """The trunk's gradient is the sum over pairs divided by ceil(m/2); a pair's the sum over
    its children divided by their number (m = 5: pairs of 2, 2 and 1)."""
    torch.manual_seed(0)
    model = CLILRResNet(depth=8, num_classes=4, num_branches=5).double().train()
    x = _images(seed=1)
    shared = model.trunk(model.stem(x)).detach().requires_grad_()
    feats = model.pooled_features(shared)
    w = torch.randn_like(feats)
    (g_shared,) = torch.autograd.grad((feats * w).sum(), shared)
    expected = torch.zeros_like(shared)
    for i in range(5):
        s = shared.detach().requires_grad_()
        (g,) = torch.autograd.grad((model.branch_features(s, i) * w[:, i]).sum(), s)
        expected += g / (2 if i < 4 else 1) / 3
    torch.testing.assert_close(g_shared, expected, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("m", [2, 4])
def test_okddip_batched_equals_its_per_branch_loop(m):
    torch.manual_seed(0)
    model = OKDDipResNet(depth=8, num_classes=4, num_branches=m).double().train()
    _batched_vs_loop(model, lambda net, x: net.forward_with_targets(x)[::2])


@pytest.mark.parametrize("layout, i", [("cl_ilr", 3), ("okddip", 2)])
def test_a_branch_is_the_plain_network_of_its_layout(layout, i):
    torch.manual_seed(0)
    model = create_model("resnet", num_classes=4, num_branches=4, layout=layout, depth=8).eval()
    plain = create_model("resnet", num_classes=4, num_branches=1, **model.arch_options).eval()
    plain.load_state_dict(model.branch_state_dict(i), strict=True)
    x = _images(seed=2).float()
    torch.testing.assert_close(plain(x)[0][:, 0], model(x)[0][:, i], rtol=1e-5, atol=1e-5)
    assert n_params(plain) == n_params(create_model("resnet", num_classes=4, num_branches=1,
                                                    depth=8))


def test_okddip_attention_rows_are_softmax_weights():
    torch.manual_seed(0)
    model = OKDDipResNet(depth=8, num_classes=4, num_branches=4).eval()
    logits, _, targets = model.forward_with_targets(_images().float())
    # Each target is a convex combination of the peers' logits: within their range per class.
    peers = logits[:, :3]
    assert (targets <= peers.max(1, keepdim=True).values + 1e-5).all()
    assert (targets >= peers.min(1, keepdim=True).values - 1e-5).all()
    assert F.softmax(torch.zeros(3), 0).sum() == 1


@pytest.mark.parametrize("kwargs, match", [
    (dict(layout="tree"), "unknown layout 'tree'"),
    (dict(layout="cl_ilr", arch="wrn"), "layout 'cl_ilr' is built for arch resnet only"),
    (dict(layout="cl_ilr", gate=True), "needs shared_stages=1, gate=False"),
    (dict(layout="okddip", shared_stages=1), "needs shared_stages=2, gate=False"),
])
def test_bad_layouts_are_refused(kwargs, match):
    arch = kwargs.pop("arch", "resnet")
    with pytest.raises(ValueError, match=match):
        create_model(arch, num_classes=4, num_branches=4, **kwargs)


@pytest.mark.parametrize("layout", ["cl_ilr", "okddip"])
def test_channels_last_gives_the_same_outputs_and_gradients(layout):
    """The GPU path's memory format: the pairs' repeat and the attention see strided tensors."""
    torch.manual_seed(0)
    model = create_model("resnet", num_classes=4, num_branches=4, layout=layout,
                         depth=8).double().train()
    last = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x = _images(seed=4)
    forward = (lambda net, t: net.forward_with_targets(t)[::2]) if layout == "okddip" else (
        lambda net, t: net(t)[:1])
    outs = [forward(net, t) for net, t in ((model, x),
                                          (last, x.to(memory_format=torch.channels_last)))]
    for a, b in zip(*outs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    for out in outs:
        sum(t.square().sum() for t in out).backward()
    for (name, p), q in zip(model.named_parameters(), last.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-9, atol=1e-11, msg=name)
