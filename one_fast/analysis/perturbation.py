"""Robustness to weight perturbation (the paper's §4.6): how fast test error grows as Gaussian
noise is added to the trained weights -- a flatter minimum degrades more slowly.

Noise model (per parameter tensor, relative to its scale): for every parameter tensor W with n
entries, W + sigma * rms(W) * E with E ~ N(0, 1) i.i.d. and rms(W) = ||W||_2 / sqrt(n), so the
noise's expected norm is sigma * ||W||_2 (a tensor of zeros stays zero). Every parameter is
perturbed (convolutions, linear layers, BatchNorm's affine weights and biases, the gate);
BatchNorm's running statistics are buffers, kept as trained, and the network runs in eval mode.
The student (branch 0) depends only on the trunk and its own branch, so its error reflects the
noise on its own weights; in a batched branch layer one tensor holds all m branches' weights and
its rms sets the noise scale of each (the branches are built and trained alike). Draw d at scale
sigma uses a CPU generator seeded from (seed, sigma's index, d), so results do not depend on the
device; sigma = 0 is evaluated once, with the weights untouched.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from ..files import atomic_write
from .outputs import MemberOutputs

NOISE_MODEL = ("W + sigma * rms(W) * N(0, 1) i.i.d. per parameter tensor W, rms(W) = "
               "||W||_2 / sqrt(numel W) (zero tensors stay zero); all parameters perturbed, "
               "BatchNorm running statistics kept as trained (eval mode)")


@torch.no_grad()
def add_relative_noise(model: nn.Module, sigma: float, generator: torch.Generator) -> None:
    """Add ``sigma * rms(W) * N(0, 1)`` noise to every floating-point parameter, in place.

    Args:
        model: the network.
        sigma: relative noise scale (>= 0).
        generator: a CPU generator (the noise is drawn on the CPU, then moved).
    """
    for p in model.parameters():
        if not p.is_floating_point() or p.numel() == 0:
            continue
        rms = p.detach().double().norm() / p.numel() ** 0.5
        noise = torch.randn(p.shape, generator=generator, dtype=torch.float64)
        p.add_((sigma * rms * noise).to(device=p.device, dtype=p.dtype))


def _summary(values: list[float]) -> dict[str, object]:
    return {"mean": statistics.mean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "draws": values}


def perturbation_robustness(model: nn.Module, evaluate: Callable[[], MemberOutputs],
                            sigmas: Sequence[float], draws: int, seed: int = 0,
                            method: str = "one") -> list[dict[str, object]]:
    """Test error of the student (branch 0) and of the ensemble under weight noise.

    Args:
        model: the trained network (its weights are restored afterwards).
        evaluate: runs the model over the test split (:func:`~.outputs.member_outputs`).
        sigmas: relative noise scales (see :data:`NOISE_MODEL`), each >= 0.
        draws: noise draws per nonzero scale (>= 1).
        seed: base seed of the draws.
        method: the run's method (what "ensemble" means; None error where it has none).

    Returns:
        One dict per sigma: ``{"sigma", "student_error_percent": {"mean", "std", "draws"},
        "ensemble_error_percent": {...} or None}``.

    Raises:
        ValueError: a negative or non-finite sigma, or draws < 1.
    """
    if draws < 1:
        raise ValueError(f"--draws must be >= 1, got {draws}")
    for s in sigmas:
        if not (s >= 0 and s != float("inf")):
            raise ValueError(f"--sigmas must be finite and >= 0, got {s}")
    original = {k: v.detach().clone() for k, v in model.state_dict().items()}
    results = []
    try:
        for i, sigma in enumerate(sigmas):
            student, ensemble = [], []
            for d in range(1 if sigma == 0 else draws):
                if sigma > 0:
                    generator = torch.Generator().manual_seed(seed * 1_000_003 + i * 1009 + d)
                    add_relative_noise(model, sigma, generator)
                outputs = evaluate()
                student.append(float(outputs.errors_percent()[0]))
                ens = outputs.ensemble_error_percent(method)
                if ens is not None:
                    ensemble.append(ens)
                model.load_state_dict(original)
            results.append({"sigma": float(sigma),
                            "student_error_percent": _summary(student),
                            "ensemble_error_percent": _summary(ensemble) if ensemble else None})
    finally:
        model.load_state_dict(original)
    return results


def plot_perturbation(results: Sequence[dict[str, object]], path: str | Path,
                      title: str) -> Path:
    """Error (%) vs sigma with ± std bars, student and ensemble; written atomically as PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    sigmas = [r["sigma"] for r in results]
    for key, label in (("student_error_percent", "student (branch 0)"),
                       ("ensemble_error_percent", "ensemble")):
        points = [(s, r[key]) for s, r in zip(sigmas, results, strict=True) if r[key]]
        if points:
            ax.errorbar([s for s, _ in points], [v["mean"] for _, v in points],
                        yerr=[v["std"] for _, v in points], marker="o", capsize=3, label=label)
    ax.set_xlabel("relative noise scale sigma (noise rms = sigma x rms of each weight tensor)")
    ax.set_ylabel("test error (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))


__all__ = ["NOISE_MODEL", "add_relative_noise", "perturbation_robustness", "plot_perturbation"]
