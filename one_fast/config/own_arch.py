"""Checks of ``--arch module:PACKAGE.MODULE:FACTORY`` runs (a user's own network) and their
``--branch-at`` / ``--arch-kwargs``; each error names the flag."""

from __future__ import annotations

import json

from ..models.own import is_own_arch
from .schema import ARCH_OPTION_FIELDS, TrainConfig, flag_name, show_value


def arch_kwargs(config: TrainConfig) -> dict[str, object]:
    """``--arch-kwargs`` as a dict ({} when not given).

    Raises:
        ValueError: not a JSON object, naming --arch-kwargs.
    """
    if config.arch_kwargs is None:
        return {}
    try:
        value = json.loads(config.arch_kwargs)
    except json.JSONDecodeError as err:
        raise ValueError(f"--arch-kwargs must be a JSON object such as '{{\"num_classes\": "
                         f"10}}', got {config.arch_kwargs!r} ({err})") from None
    if not isinstance(value, dict):
        raise ValueError(f"--arch-kwargs must be a JSON object such as '{{\"num_classes\": 10}}'"
                         f", got {type(value).__name__} {config.arch_kwargs!r}")
    return value


def validate_own_arch(config: TrainConfig) -> None:
    """The flags of a ``module:`` arch agree; built-in archs take no --branch-at/--arch-kwargs.

    Raises:
        ValueError: naming the flag.
    """
    if not is_own_arch(config.arch):
        for name in ("branch_at", "arch_kwargs"):
            if getattr(config, name) is not None:
                raise ValueError(f"{flag_name(name)} is only taken by --arch module:PACKAGE."
                                 f"MODULE:FACTORY (your own network), not --arch {config.arch}")
        return
    for name in ARCH_OPTION_FIELDS:
        value = getattr(config, name)
        if value is not None:
            raise ValueError(f"{flag_name(name)} {show_value(value)} is not taken by --arch "
                             f"{config.arch}: give your factory's arguments with --arch-kwargs "
                             f"JSON")
    arch_kwargs(config)
    if config.share_stem:
        if config.shared_stages is not None:
            raise ValueError(f"--shared-stages is not taken by --arch {config.arch}: "
                             f"--branch-at names where the branches start")
        if not config.branch_at:
            raise ValueError(f"--arch {config.arch} needs --branch-at NAME: the submodule "
                             f"where the branches start (e.g. layer4)")
    elif config.branch_at is not None:
        raise ValueError("--branch-at with --no-share-stem: nothing is shared, the branches "
                         "are whole copies of the network; leave --branch-at out")
    elif config.shared_stages not in (None, 0):
        raise ValueError(f"--no-share-stem shares nothing: --shared-stages must be 0, got "
                         f"{config.shared_stages}")


__all__ = ["arch_kwargs", "validate_own_arch"]
