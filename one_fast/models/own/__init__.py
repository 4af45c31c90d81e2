"""ONE for a user's own network: ``branch(model, at=...)`` and the trainer's ``module:`` archs."""

from .build import PERTURBATION, branch
from .factory import OWN_PREFIX, build_own_model, create_own_model, is_own_arch
from .gate import ONEGate
from .network import OwnBranchedNetwork

__all__ = ["OWN_PREFIX", "ONEGate", "OwnBranchedNetwork", "PERTURBATION", "branch",
           "build_own_model", "create_own_model", "is_own_arch"]
