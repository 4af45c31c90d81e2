"""A resumed run's config: the checkpoint's settings as the base, the flags given on top; and the
check that a resume continues the run it names (only :data:`RESUMABLE_FIELDS` may change)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from ..config import (
    INVOCATION_FIELDS,
    RESUMABLE_FIELDS,
    TrainConfig,
    config_differences,
    config_from_flags,
    config_to_dict,
    describe_differences,
    flag_name,
    run_dir_of,
)
from ..engine.checkpoint import load_checkpoint


class ResumeMismatchError(ValueError):
    """A resume asked for settings other than the run's own (the message names the flags)."""


def config_for(given: dict[str, object]) -> tuple[TrainConfig, list[str]]:
    """The run's config from the flags given: on the preset, or on the resumed run's settings.

    With ``--resume`` the checkpoint's stored config is the base (so ``--resume DIR`` alone
    continues that run as it was started) and only the flags given change it; the fields in
    :data:`~one_fast.config.INVOCATION_FIELDS` (where and how this process runs) are not taken
    from the checkpoint.
    """
    if not given.get("resume"):
        return config_from_flags(given)
    try:
        stored = load_checkpoint(str(given["resume"]))["config"]
    except FileNotFoundError as err:
        folder = Path(run_dir_of(str(given["resume"])))
        hint = (": no epoch of that run finished, so there is nothing to continue; start it "
                "again with the command that started it (without --resume)"
                if folder.is_dir() else "")
        raise FileNotFoundError(f"--resume {given['resume']}: {err}{hint}") from None
    defaults = config_to_dict(TrainConfig())
    base = {**defaults, **{k: v for k, v in stored.items()
                           if k in defaults and k not in INVOCATION_FIELDS}}
    base["lr_milestones"] = tuple(base["lr_milestones"])
    return config_from_flags(given, base=base)


def check_resumable(stored: Mapping[str, object], config: TrainConfig, where: str) -> None:
    """Refuse a resume that would change what the run computes.

    Args:
        stored: the checkpoint's config.
        config: the config of this invocation.
        where: the ``--resume`` argument, for the message.

    Raises:
        ResumeMismatchError: one line naming every differing flag, its saved value and the
            value asked for now.
    """
    differences = config_differences(stored, config, ignore=RESUMABLE_FIELDS)
    if differences:
        allowed = ", ".join(flag_name(name) for name in RESUMABLE_FIELDS
                            if name not in INVOCATION_FIELDS)
        raise ResumeMismatchError(
            f"--resume {where}: that run was trained with "
            f"{describe_differences(differences)}; a resumed run keeps its settings (only "
            f"{allowed} and where/how it runs may change): drop those flags, or start a new "
            "run in another --out-dir")


__all__ = ["ResumeMismatchError", "check_resumable", "config_for"]
