"""What a network costs: FLOPs per image (2 x multiply-adds) to train and to test, parameters.

Below the engine and deploy in the layers, so both (and the experiment tables) count the same
way; see :mod:`one_fast.costs.counting`.
"""

from .counting import (
    FLOPS_CONVENTION,
    Costs,
    inference_flops,
    model_costs,
    one_loss_reference,
    training_flops,
)

__all__ = ["FLOPS_CONVENTION", "Costs", "inference_flops", "model_costs", "one_loss_reference",
           "training_flops"]
