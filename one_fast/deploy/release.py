"""Pick what to deploy from a trained network and describe it for the exported file."""

from __future__ import annotations

from torch import nn

from ..costs import FLOPS_CONVENTION, inference_flops
from ..methods import Method
from ..models import BranchedNetwork, OwnBranchedNetwork
from .extract import PlainNetwork, built_from, extract_branch, extract_ensemble
from .inputs import InputSpec

Member = int | str  # a branch index, or "ensemble"


def parse_member(text: str) -> Member:
    """``--member`` value: a branch index ("0", "1", ...) or "ensemble"."""
    if text == "ensemble":
        return text
    try:
        index = int(text)
    except ValueError:
        raise ValueError(f"--member must be a branch index (0, 1, ...) or 'ensemble', got "
                         f"{text!r}") from None
    if index < 0:
        raise ValueError(f"--member must be >= 0, got {index}")
    return index


def select(model: BranchedNetwork | OwnBranchedNetwork, method: Method,
           member: Member) -> nn.Module:
    """The deployable module: branch ``member`` (extract_branch) or the method's ensemble.

    A branch of a ``--arch module:...`` network is the user's own class (see
    :func:`~one_fast.deploy.extract.extract_branch`); everything else a :class:`PlainNetwork`.

    Raises:
        ValueError: an index out of range or an ensemble the method does not have, naming
            ``--member``.
    """
    m = model.num_branches
    if member == "ensemble":
        if not method.has_ensemble or m < 2:
            raise ValueError(f"--member ensemble: this run ({method.name}, m = {m}) has no "
                             f"ensemble; export a member (--member 0)")
        return extract_ensemble(model, method)
    if not 0 <= member < m:
        raise ValueError(f"--member {member} is out of range: the network has {m} "
                         f"branch{'es' if m > 1 else ''} (0..{m - 1})")
    return extract_branch(model, member)


def describe(module: nn.Module, member: Member, method: Method, inputs: InputSpec,
             source: dict | None = None) -> dict:
    """The JSON description an exported file carries (see :mod:`one_fast.deploy.formats`).

    Holds what the file computes ("output": "logits", or "log_probabilities" for an
    averaged-probability ensemble), the network to rebuild it from (arch, options, m), its
    inputs, parameter count and FLOPs per image (one_fast.costs' convention).
    """
    network = module.network if isinstance(module, PlainNetwork) else module
    flops = inference_flops(network, inputs.image_shape)
    arch, arch_options, num_branches = built_from(module)
    return {
        "member": member,
        "method": method.name,
        "output": method.ensemble_output if member == "ensemble" else "logits",
        "arch": arch,
        "arch_options": arch_options,
        "num_branches": num_branches,
        "params": sum(p.numel() for p in module.parameters()),
        "flops_per_image": flops,
        "flops_convention": FLOPS_CONVENTION,
        "inputs": inputs.to_dict(),
        "source": source or {},
    }
