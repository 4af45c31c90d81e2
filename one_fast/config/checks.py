"""Checks of a :class:`~one_fast.config.schema.TrainConfig`: every error names the flag."""

from __future__ import annotations

from dataclasses import fields

from ..methods import METHODS
from ..models.factory import ARCHS, LAYOUTS
from ..models.own import is_own_arch
from .own_arch import validate_own_arch
from .schema import ARCH_OPTION_FIELDS, TrainConfig, flag_name, show_value


def validate_config(config: TrainConfig) -> None:
    """Reject values outside each field's declared range, and inconsistent combinations.

    Raises:
        ValueError: naming the flag, the value and what is allowed.
    """
    for f in fields(TrainConfig):
        value, flag = getattr(config, f.name), flag_name(f.name)
        within, choices = f.metadata.get("within"), f.metadata.get("choices")
        if value is None and f.default is None:
            continue
        if f.name == "arch" and is_own_arch(value):
            continue  # a user's own network (module:...): validate_own_arch checks it
        if choices is not None and value not in choices:
            raise ValueError(f"{flag} must be one of {', '.join(choices)}, got {value!r}")
        if within is not None:
            for item in value if isinstance(value, tuple) else (value,):
                if item not in within:
                    raise ValueError(f"{flag} must be {within}, got {show_value(value)}")
    milestones = config.lr_milestones
    if list(milestones) != sorted(set(milestones)):
        raise ValueError(f"--lr-milestones must be strictly increasing, got "
                         f"{show_value(milestones)}")
    if milestones and milestones[-1] > config.epochs:
        raise ValueError(f"--lr-milestones {show_value(milestones)} go beyond --epochs "
                         f"{config.epochs}; the learning rate would never decay there")
    if config.device != "auto" and config.device.split(":")[0] not in ("cpu", "cuda") or (
            config.device.startswith("cuda:") and not config.device[5:].isdigit()):
        raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {config.device!r}")
    validate_model_fields(config)


def validate_model_fields(config: TrainConfig) -> None:
    """Check that the arch, its options and the method agree; ValueError naming the flag."""
    validate_own_arch(config)
    if is_own_arch(config.arch):
        _validate_method(config)
        return
    takes = ARCHS[config.arch].options
    for name in ARCH_OPTION_FIELDS:
        value = getattr(config, name)
        if value is not None and name not in takes:
            taken = [flag_name(k) for k in ARCH_OPTION_FIELDS if k in takes]
            raise ValueError(f"{flag_name(name)} {show_value(value)} is not taken by --arch "
                             f"{config.arch} (its options: {', '.join(taken) or 'none'})")
    most = takes["shared_stages"].default  # every stage but the last: the paper's ONE
    if config.shared_stages is not None and config.shared_stages > most:
        raise ValueError(f"--shared-stages must be in [0, {most}] for --arch {config.arch}, got "
                         f"{config.shared_stages}")
    if not config.share_stem and config.shared_stages != 0:
        raise ValueError("--no-share-stem needs --shared-stages 0 (a per-branch stem cannot "
                         "feed a shared stage)")
    _validate_method(config)


def _validate_method(config: TrainConfig) -> None:
    layout = METHODS[config.method].layout
    if layout != "one" and config.arch not in LAYOUTS[layout]:
        raise ValueError(f"--method {config.method} builds its own branch layout of --arch "
                         f"{', '.join(LAYOUTS[layout])} only, got --arch {config.arch}")
    METHODS[config.method]().check(num_branches=config.num_branches,
                                   shared_stages=config.shared_stages,
                                   share_stem=config.share_stem, gate=config.gate)
    if config.method == "kd" and not config.teacher:
        raise ValueError("--method kd needs --teacher RUN_DIR (a finished one_fast run on the "
                         "same dataset)")
    if config.teacher and config.method != "kd":
        raise ValueError(f"--teacher is only used by --method kd (this run is --method "
                         f"{config.method})")
    if config.teacher_output != "ensemble" and not config.teacher_output.isdigit():
        raise ValueError(f"--teacher-output must be ensemble or a branch index (0, 1, ...), got "
                         f"{config.teacher_output!r}")


__all__ = ["validate_config", "validate_model_fields"]
