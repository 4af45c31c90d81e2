"""one_fast: a fast training engine for ONE (On-the-fly Native Ensemble, Lan et al. 2018)."""

from .loss import ONELoss, ONELossTerms, available_backends, one_loss
from .loss.cl_ilr import CLILRLossTerms, cl_ilr_loss
from .loss.dml import DMLLoss, DMLLossTerms, dml_loss
from .loss.fused_linear import FusedLinearONELoss, fused_linear_one_loss
from .loss.kd import KDLoss, KDLossTerms, kd_loss
from .loss.okddip import OKDDipLossTerms, okddip_loss
from .methods import create_method
from .models import ARCHS, ONEResNet, create_model

__version__ = "0.1.0"

__all__ = ["ONELoss", "ONELossTerms", "ONEResNet", "available_backends", "one_loss"]
__all__ += ["DMLLoss", "DMLLossTerms", "KDLoss", "KDLossTerms", "dml_loss", "kd_loss"]
__all__ += ["FusedLinearONELoss", "fused_linear_one_loss"]
__all__ += ["CLILRLossTerms", "OKDDipLossTerms", "cl_ilr_loss", "okddip_loss"]
__all__ += ["ARCHS", "create_method", "create_model"]
