"""branch() on Hugging Face transformers vision models built from small configs (no weights are
downloaded). transformers is an optional test extra (``pip install -e ".[hf]"``): without it
these tests skip, saying so."""

from __future__ import annotations

import pytest
import torch

from one_fast import ONELoss
from one_fast.export import extract_branch
from one_fast.models import branch

from .equality import assert_batched_equals_loop

transformers = pytest.importorskip(
    "transformers", reason="the Hugging Face tests need the [hf] extra: pip install -e '.[hf]'")

SIZES = dict(hidden_sizes=[8, 16, 16, 32], depths=[1, 1, 1, 1], num_labels=5)


def hf_resnet():
    return transformers.ResNetForImageClassification(
        transformers.ResNetConfig(embedding_size=8, **SIZES)).double()


def hf_convnext():
    return transformers.ConvNextForImageClassification(
        transformers.ConvNextConfig(drop_path_rate=0.0, **SIZES)).double()


MODELS = {"resnet": (hf_resnet, "resnet.encoder.stages.3"),
          "convnext": (hf_convnext, "convnext.encoder.stages.3")}


def images(n: int = 6) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, dtype=torch.float64) * 2 + 0.5


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("m", [1, 2, 3])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batched_equals_the_loop(name, m, training):
    factory, at = MODELS[name]
    assert_batched_equals_loop(branch(factory, at=at, num_branches=m), images, training)


@pytest.mark.parametrize("name", MODELS)
def test_the_student_is_the_transformers_class(name):
    factory, at = MODELS[name]
    net = branch(factory, at=at, num_branches=3)
    with torch.no_grad():
        net.train()(images())
    net.eval()
    x = images()
    expected = net(x)[0]
    for i in range(3):
        student = extract_branch(net, i)
        assert type(student) is type(factory())
        torch.testing.assert_close(student(x).logits, expected[:, i])
        fresh = factory()
        fresh.load_state_dict(student.state_dict(), strict=True)
        torch.testing.assert_close(fresh.eval()(x).logits, expected[:, i])


def test_stochastic_depth_is_independent_per_branch():
    """ConvNeXt's drop path in the branches draws per branch (randomness="different")."""
    config = transformers.ConvNextConfig(drop_path_rate=0.5, layer_scale_init_value=1.0, **SIZES)
    net = branch(lambda: transformers.ConvNextForImageClassification(config),
                 at="convnext.encoder.stages.3", num_branches=2)
    with torch.no_grad():
        for tensor in net.branch_tensors().values():
            tensor.copy_(tensor[:1].expand_as(tensor))  # both branches = branch 0
    x = torch.randn(32, 3, 32, 32)
    logits = net.train()(x)[0]  # the last stage drops a sample's residual with p = 0.5
    assert not torch.allclose(logits[:, 0], logits[:, 1])
    logits = net.eval()(x)[0]
    torch.testing.assert_close(logits[:, 0], logits[:, 1], rtol=0, atol=0)


def test_a_plain_loop_with_one_loss_lowers_the_loss():
    net = branch(lambda: hf_resnet().float(), at="resnet.encoder.stages.3")
    criterion = ONELoss()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 5, (16,))
    losses = []
    for _ in range(8):
        loss = criterion(*net(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_vit_is_refused_naming_the_construct():
    """ViTModel.forward compares the input's dtype with its weights' (a Python `if` on a traced
    value), so fx cannot trace the module that holds the encoder layers."""
    config = transformers.ViTConfig(hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                                    intermediate_size=32, image_size=32, patch_size=8,
                                    num_labels=5)
    with pytest.raises(ValueError, match=r"at='vit.layers.2' is inside vit, which torch.fx "
                                         r"cannot trace through \(TraceError: symbolically "
                                         r"traced variables cannot be used as inputs to "
                                         r"control flow\)"):
        branch(transformers.ViTForImageClassification(config), at="vit.layers.2")
