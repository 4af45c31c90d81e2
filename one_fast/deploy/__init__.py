"""After training: members and ensembles as plain modules, exported files, inputs for them."""

from .extract import PlainNetwork, extract_branch, extract_ensemble, plain_network

__all__ = ["PlainNetwork", "extract_branch", "extract_ensemble", "plain_network"]
