"""How much the members of an ensemble agree (the paper's §4.6 model analysis): ONE's branches,
distilled from one teacher, against independently trained networks.

For members i, j over the N test images: disagreement = fraction of images whose top-1
predictions differ; correlation = Pearson correlation of their softmax probability vectors
(all N x C entries); output variance = mean over images and classes of the variance across
members (population variance, over m) of the probabilities, and likewise of the logits.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..files import atomic_write
from .outputs import MemberOutputs


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    a, b = a - a.mean(), b - b.mean()
    denom = (a.norm() * b.norm()).item()
    return float((a @ b).item() / denom) if denom > 0 else float("nan")


def branch_agreement(outputs: MemberOutputs) -> dict[str, object]:
    """Pairwise disagreement and correlation of the members, and their output variance.

    Args:
        outputs: the members' test outputs (m >= 2).

    Returns:
        ``{"members", "member_error_percent": [m], "disagreement": m x m (fraction),
        "correlation": m x m, "mean_pairwise_disagreement", "mean_pairwise_correlation",
        "probability_variance", "logit_variance"}``.

    Raises:
        ValueError: fewer than 2 members.
    """
    logits = outputs.logits
    m = logits.shape[1]
    if m < 2:
        raise ValueError(f"branch agreement needs a run with at least 2 members; this one "
                         f"has {m}")
    probs = torch.softmax(logits.double(), dim=-1)  # (N, m, C)
    preds = logits.argmax(-1)  # (N, m)
    disagreement = [[float((preds[:, i] != preds[:, j]).double().mean()) for j in range(m)]
                    for i in range(m)]
    correlation = [[1.0 if i == j else _pearson(probs[:, i], probs[:, j]) for j in range(m)]
                   for i in range(m)]
    pairs = [(i, j) for i in range(m) for j in range(i + 1, m)]
    return {
        "members": m,
        "member_error_percent": [float(e) for e in outputs.errors_percent()],
        "disagreement": disagreement,
        "correlation": correlation,
        "mean_pairwise_disagreement": sum(disagreement[i][j] for i, j in pairs) / len(pairs),
        "mean_pairwise_correlation": sum(correlation[i][j] for i, j in pairs) / len(pairs),
        "probability_variance": float(probs.var(dim=1, unbiased=False).mean()),
        "logit_variance": float(logits.double().var(dim=1, unbiased=False).mean()),
    }


# Each map's full range: a map with one value everywhere (members that always agree) is shown
# on it, instead of matplotlib's +-0.1 around that value.
FULL_RANGE = {"disagreement": (0.0, 100.0), "correlation": (-1.0, 1.0)}


def agreement_figure(result: dict[str, object], title: str):
    """The matplotlib Figure of :func:`plot_agreement`: heat maps of pairwise disagreement (%)
    and correlation, coloured over the data's range (the measure's full range when the map
    holds one value)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    m = int(result["members"])
    fig = Figure(figsize=(8, 3.8))
    FigureCanvasAgg(fig)
    panels = (("disagreement", "top-1 disagreement (%)", 100.0),
              ("correlation", "probability correlation", 1.0))
    for k, (key, label, scale) in enumerate(panels, 1):
        ax = fig.add_subplot(1, 2, k)
        values = [[v * scale for v in row] for row in result[key]]
        low, high = min(min(row) for row in values), max(max(row) for row in values)
        if high - low < 1e-6 * scale:  # one value up to rounding (correlations of 1 - 6e-8)
            low, high = FULL_RANGE[key]
        image = ax.imshow(values, cmap="viridis", vmin=low, vmax=high)
        fig.colorbar(image, ax=ax, fraction=0.046)
        for i in range(m):
            for j in range(m):
                bright = values[i][j] > (low + high) / 2  # viridis is light at the top
                ax.text(j, i, f"{values[i][j]:.2f}" if scale == 1.0 else f"{values[i][j]:.1f}",
                        ha="center", va="center", color="k" if bright else "w", fontsize=8)
        ax.set_xticks(range(m))
        ax.set_yticks(range(m))
        ax.set_title(label, fontsize=9)
    fig.suptitle(f"{title}\nprobability variance across members "
                 f"{result['probability_variance']:.3g}", fontsize=9)
    fig.tight_layout()
    return fig


def plot_agreement(result: dict[str, object], path: str | Path, title: str) -> Path:
    """Heat maps of pairwise disagreement (%) and correlation; written atomically as PNG."""
    fig = agreement_figure(result, title)
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))


__all__ = ["agreement_figure", "branch_agreement", "plot_agreement"]
