"""The paper's model analysis (§4.6) of trained runs: weight-perturbation robustness and the
agreement of ensemble members. ``python -m one_fast.analyze RUN_DIR`` runs both on a run
loaded by :func:`one_fast.runs.load_analysed_run`."""

from .agreement import branch_agreement, plot_agreement
from .outputs import MemberOutputs, member_outputs
from .perturbation import (
    NOISE_MODEL,
    add_relative_noise,
    perturbation_robustness,
    plot_perturbation,
)

__all__ = ["NOISE_MODEL", "MemberOutputs", "add_relative_noise", "branch_agreement",
           "member_outputs", "perturbation_robustness", "plot_agreement", "plot_perturbation"]
