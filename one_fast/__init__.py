"""one_fast: a fast training engine for ONE (On-the-fly Native Ensemble, Lan et al. 2018)."""

from .loss import (
    DMLLoss,
    DMLLossTerms,
    KDLoss,
    KDLossTerms,
    ONELoss,
    ONELossTerms,
    available_backends,
    dml_loss,
    kd_loss,
    one_loss,
)
from .models import ONEResNet

__version__ = "0.1.0"

__all__ = ["ONELoss", "ONELossTerms", "ONEResNet", "available_backends", "one_loss"]
__all__ += ["DMLLoss", "DMLLossTerms", "KDLoss", "KDLossTerms", "dml_loss", "kd_loss"]
