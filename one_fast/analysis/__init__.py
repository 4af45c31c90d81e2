"""The paper's model analysis (§4.6) of trained runs: weight-perturbation robustness and the
agreement of ensemble members. ``python -m one_fast.analyze RUN_DIR`` runs both."""

from .agreement import branch_agreement, plot_agreement
from .outputs import MemberOutputs, member_outputs
from .perturbation import (
    NOISE_MODEL,
    add_relative_noise,
    perturbation_robustness,
    plot_perturbation,
)
from .run_model import AnalysedRun, load_analysed_run

__all__ = ["NOISE_MODEL", "AnalysedRun", "MemberOutputs", "add_relative_noise", "branch_agreement",
           "load_analysed_run", "perturbation_robustness", "plot_agreement", "plot_perturbation",
           "member_outputs"]
