"""From the flags a user gave (a dict, however they were parsed) to a validated config.

The preset named by ``--preset`` (or ``--dataset``) is the base; flags given override it;
``--epochs`` alone rescales the preset's schedule; the method fixes the model settings it
needs. Parsing the command line itself is the command layer's (:mod:`one_fast.cli`).
"""

from __future__ import annotations

import os

from ..methods import METHODS, READERS, unread_flags
from .checks import validate_config
from .presets import PRESETS
from .schema import ARCH_OPTION_FIELDS, TrainConfig, flag_name, show_value


def scale_schedule(values: dict[str, object], given: dict[str, object],
                   preset: dict[str, object]) -> list[str]:
    """Scale the preset's LR milestones and KL ramp-up when only ``--epochs`` was given.

    ``--epochs 50`` on a 300-epoch recipe moves its milestones 150,225 to 25,38 (the same
    fractions of the run) instead of leaving them beyond the run's end. Changes ``values`` in
    place.

    Returns:
        One line per scaled setting, saying what changed and how to choose it instead.
    """
    epochs, base = values["epochs"], preset.get("epochs")
    if "epochs" not in given or not base or epochs == base:
        return []
    notes = []
    milestones = preset.get("lr_milestones", ())
    if "lr_milestones" not in given and milestones:
        scaled = tuple(sorted({min(epochs, max(1, round(m * epochs / base))) for m in milestones}))
        values["lr_milestones"] = scaled
        notes.append(f"--epochs {epochs}: LR milestones scaled from the preset's "
                     f"{show_value(milestones)} (of {base} epochs) to {show_value(scaled)}; set "
                     "--lr-milestones to choose them")
    rampup = preset.get("rampup", 0)
    if "rampup" not in given and rampup:
        values["rampup"] = max(1, round(rampup * epochs / base))
        notes.append(f"--epochs {epochs}: KL ramp-up scaled from the preset's {rampup} epochs to "
                     f"{values['rampup']}; set --rampup to choose it")
    return notes


def config_from_flags(given: dict[str, object],
                      base: dict[str, object] | None = None) -> tuple[TrainConfig, list[str]]:
    """Build the config from the flags given and a base (a preset, or a resumed run's config).

    Args:
        given: the flags given (field name -> value), plus "preset" if one was named; e.g.
            :func:`one_fast.cli.train_flags.parse_flags`'s output.
        base: values the flags override; default: the preset named by --preset or --dataset,
            whose schedule is then scaled to --epochs (:func:`scale_schedule`).

    Returns:
        The validated config and notes for the user (one line each).

    Raises:
        ValueError: an unknown preset or a value out of range, naming the flag.
    """
    given = dict(given)
    preset_name = given.pop("preset", None) or given.get("dataset", TrainConfig.dataset)
    notes: list[str] = []
    if base is None:
        if preset_name not in PRESETS:
            raise ValueError(f"--dataset {preset_name!r}: expected one of {sorted(PRESETS)}")
        preset = PRESETS[preset_name]
        if given.get("arch", "resnet") != preset.get("arch", "resnet"):
            # The preset's arch options describe its own arch (a ResNet): another --arch starts
            # from that arch's defaults.
            preset = {k: v for k, v in preset.items() if k not in ARCH_OPTION_FIELDS}
        values = {**preset, **given}
        notes = scale_schedule(values, given, PRESETS[preset_name])
    else:
        values = {**base, **given}
    apply_method_requirements(values, given)
    if given.get("resume") and "out_dir" not in given:
        values["out_dir"] = run_dir_of(str(given["resume"]))
    config = TrainConfig(**values)
    validate_config(config)
    if config.rampup > config.epochs:
        notes.append(f"warning: --rampup {config.rampup} is longer than --epochs "
                     f"{config.epochs}: the KL weight never reaches --kl-weight "
                     f"{config.kl_weight:g}")
    return config, notes


def apply_method_requirements(values: dict[str, object], given: dict[str, object]) -> None:
    """Set the model fields the method fixes (``required_model``) unless given as flags.

    ``--method dml`` alone gives fully independent members (``--shared-stages 0
    --no-share-stem --no-gate``); a flag given explicitly that contradicts the method is an
    error naming it (e.g. ``--method baseline --num-branches 3``). Changes ``values`` in place.
    """
    cls = METHODS.get(str(values.get("method", TrainConfig.method)))
    if cls is None:  # validate_config names the bad --method
        return
    method = cls()
    method.check(**{k: v for k, v in given.items() if k in method.required_model})
    check_flags_read(method.name, given, method.required_model)
    values.update(method.required_model)
    if values.get("lr_schedule") == "cosine":
        for name in ("lr_milestones", "lr_decay"):
            if name in given:
                raise ValueError(f"{flag_name(name)} is read by --lr-schedule step only; the "
                                 "cosine schedule has no milestones (leave it out)")


def check_flags_read(method: str, given: dict[str, object], fixed: dict[str, object]) -> None:
    """Refuse a flag the method does not read (:data:`one_fast.methods.READERS`), naming it
    and the methods that do; a flag equal to what the method fixes is accepted."""
    unread = unread_flags(method, given, fixed)
    if unread:
        field = unread[0]
        raise ValueError(f"{flag_name(field)} is only used by --method "
                         f"{', '.join(sorted(READERS[field]))} (this run is --method {method}); "
                         "leave it out")


def run_dir_of(path: str) -> str:
    """The run folder of a ``--resume`` argument (the folder itself, or a checkpoint's folder)."""
    return os.path.dirname(path) or "." if path.endswith(".pt") else path


__all__ = ["apply_method_requirements", "check_flags_read", "config_from_flags", "run_dir_of",
           "scale_schedule"]
