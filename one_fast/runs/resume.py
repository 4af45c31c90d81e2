"""A resumed run's config: the checkpoint's settings as the base, the flags given on top."""

from __future__ import annotations

from ..config import INVOCATION_FIELDS, TrainConfig, config_from_flags, config_to_dict
from ..engine.checkpoint import load_checkpoint


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
        raise FileNotFoundError(f"--resume {given['resume']}: {err}") from None
    defaults = config_to_dict(TrainConfig())
    base = {**defaults, **{k: v for k, v in stored.items()
                           if k in defaults and k not in INVOCATION_FIELDS}}
    base["lr_milestones"] = tuple(base["lr_milestones"])
    return config_from_flags(given, base=base)



__all__ = ["config_for"]
