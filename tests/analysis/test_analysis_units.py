"""Weight noise, its restoration, and member agreement on hand-made outputs (fast)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from one_fast.analysis import (
    MemberOutputs,
    add_relative_noise,
    branch_agreement,
    perturbation_robustness,
)


def test_noise_is_relative_to_each_tensors_rms_and_spares_buffers():
    model = nn.Sequential(nn.Linear(200, 100), nn.BatchNorm1d(100), nn.Linear(100, 4))
    with torch.no_grad():
        model[0].weight.mul_(7.0)  # a different scale per tensor
        model[1].bias.uniform_(-3.0, 3.0)
        model[1].running_mean.fill_(0.25)
        model[2].bias.zero_()  # relative noise: a tensor of zeros stays zero
    before = {k: v.clone() for k, v in model.state_dict().items()}
    add_relative_noise(model, 0.1, torch.Generator().manual_seed(0))
    after = model.state_dict()
    for name in ("0.weight", "0.bias", "1.weight", "1.bias"):
        w = before[name].double()
        noise = after[name].double() - w
        want = 0.1 * w.norm() / math.sqrt(w.numel())
        # rms of n i.i.d. normals: relative spread ~ 1/sqrt(2n); 100 entries -> 7%, so 30% is
        # a loose bound for the small tensors and the 20,000-entry weight is checked at 3%.
        tol = 0.03 if w.numel() > 1000 else 0.3
        got = noise.norm() / math.sqrt(w.numel())
        assert abs(got / want - 1) < tol, name
    assert torch.equal(after["2.bias"], before["2.bias"])
    assert torch.equal(after["1.running_mean"], before["1.running_mean"])
    assert torch.equal(after["1.running_var"], before["1.running_var"])


def test_same_generator_seed_same_noise_and_zero_sigma_changes_nothing():
    def noisy(sigma, seed):
        torch.manual_seed(1)
        model = nn.Linear(5, 3)
        add_relative_noise(model, sigma, torch.Generator().manual_seed(seed))
        return model.weight.detach().clone()

    assert torch.equal(noisy(0.2, 4), noisy(0.2, 4))
    assert not torch.equal(noisy(0.2, 4), noisy(0.2, 5))
    assert torch.equal(noisy(0.0, 4), noisy(0.0, 9))


class _TwoMembers(nn.Module):
    """(N, 2, 2) logits: member 0 copies the input, member 1 its weight times the input."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.0))

    def forward(self, x):
        logits = torch.stack([x, self.scale * x], dim=1)
        return logits, torch.full(logits.shape[:2], 0.5)


def test_perturbation_restores_weights_and_draws_once_at_zero():
    model = _TwoMembers()
    x = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [0.0, 2.0]])
    y = torch.tensor([0, 1, 1, 1])  # member 0 is right 3 of 4 times
    calls = []

    def evaluate():
        calls.append(model.scale.item())
        logits, gate = model(x)
        return MemberOutputs(logits.detach(), gate, y)

    results = perturbation_robustness(model, evaluate, [0.0, 1.0], draws=3, seed=0)
    assert len(calls) == 1 + 3 and calls[0] == 1.0 and len(set(calls[1:])) == 3
    assert model.scale.item() == 1.0
    zero = results[0]
    assert zero["student_error_percent"] == {"mean": 25.0, "std": 0.0, "draws": [25.0]}
    assert len(results[1]["student_error_percent"]["draws"]) == 3
    with pytest.raises(ValueError, match="--sigmas"):
        perturbation_robustness(model, evaluate, [-0.1], draws=1)
    with pytest.raises(ValueError, match="--draws"):
        perturbation_robustness(model, evaluate, [0.1], draws=0)


def test_agreement_on_hand_made_members():
    # 4 images, 3 classes, 3 members; member 2 = member 0, member 1 differs on 2 images.
    a = torch.tensor([[3.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 3.0], [3.0, 0.0, 0.0]])
    b = torch.tensor([[0.0, 3.0, 0.0], [0.0, 3.0, 0.0], [3.0, 0.0, 0.0], [3.0, 0.0, 0.0]])
    logits = torch.stack([a, b, a], dim=1)
    labels = torch.tensor([0, 1, 2, 0])
    result = branch_agreement(MemberOutputs(logits, torch.full((4, 3), 1 / 3), labels))
    assert result["disagreement"] == [[0.0, 0.5, 0.0], [0.5, 0.0, 0.5], [0.0, 0.5, 0.0]]
    assert result["mean_pairwise_disagreement"] == pytest.approx(1 / 3)
    assert result["member_error_percent"] == [0.0, 50.0, 0.0]
    assert result["correlation"][0][2] == pytest.approx(1.0)
    # Probability variance across members, written out: images 0 and 2 differ, 1 and 3 not.
    p_hi = math.exp(3) / (math.exp(3) + 2)
    p_lo = 1 / (math.exp(3) + 2)
    var = ((p_hi - p_lo) ** 2) * 2 / 9  # two of three members at one value, one at the other
    want = (2 * 2 * var) / (4 * 3)  # 2 images x 2 classes differ, over 4 x 3 entries
    assert result["probability_variance"] == pytest.approx(want, rel=1e-12)
    with pytest.raises(ValueError, match="at least 2 members"):
        branch_agreement(MemberOutputs(logits[:, :1], torch.ones(4, 1), labels))


def _colour_limits(result: dict) -> list[tuple[float, float]]:
    from one_fast.analysis.agreement import agreement_figure

    figure = agreement_figure(result, "run")
    return [tuple(ax.images[0].get_clim()) for ax in figure.axes if ax.images]


def test_agreement_map_colours_span_the_data_or_the_full_range():
    a = torch.tensor([[3.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 3.0], [3.0, 0.0, 0.0]])
    b = torch.tensor([[0.0, 3.0, 0.0], [0.0, 3.0, 0.0], [3.0, 0.0, 0.0], [3.0, 0.0, 0.0]])
    labels = torch.tensor([0, 1, 2, 0])
    gate = torch.full((4, 3), 1 / 3)
    differing = branch_agreement(MemberOutputs(torch.stack([a, b, a], 1), gate, labels))
    low_corr = min(min(row) for row in differing["correlation"])
    assert _colour_limits(differing) == [(0.0, 50.0), (pytest.approx(low_corr), 1.0)]
    # Members that always agree: all-zero disagreement, all-one correlation. Their maps are
    # coloured over the measure's full range, not matplotlib's +-0.1 around the one value.
    same = branch_agreement(MemberOutputs(torch.stack([a, a, a], 1), gate, labels))
    assert same["disagreement"] == [[0.0] * 3] * 3
    assert _colour_limits(same) == [(0.0, 100.0), (-1.0, 1.0)]
