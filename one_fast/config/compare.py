"""Which settings two configs differ in, said as flags: the resume check and the table runner's
match of a run folder against its plan both read this."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import fields

from .schema import INCIDENTAL_FIELDS, TrainConfig, config_to_dict, flag_name, show_value


def _plain(value: object) -> object:
    return list(value) if isinstance(value, tuple) else value


def config_differences(stored: Mapping[str, object], config: TrainConfig,
                       ignore: Iterable[str] = ()) -> list[tuple[str, object, object]]:
    """The fields in which ``stored`` (a saved run's config dict) and ``config`` differ.

    A field ``stored`` lacks (saved before the field existed) is compared with its default,
    which is what that older run used.

    Args:
        stored: the config dict a checkpoint or run.json holds.
        config: the config asked for now.
        ignore: fields whose difference does not count.

    Returns:
        ``(field, stored value, value now)`` per differing field, in the schema's order.
    """
    skip = set(ignore)
    now = config_to_dict(config)
    defaults = config_to_dict(TrainConfig())
    out = []
    for f in fields(TrainConfig):
        if f.name in skip:
            continue
        before = _plain(stored.get(f.name, defaults[f.name]))
        if before != now[f.name]:
            out.append((f.name, before, now[f.name]))
    return out


def describe_differences(differences: list[tuple[str, object, object]],
                         label: str = "now") -> str:
    """``--lr 0.01 (now 0.5), --kl-weight 1 (now 0)``: the saved value of each differing flag
    and, labelled ``label``, the value asked for."""
    def shown(value: object) -> str:
        return show_value(tuple(value) if isinstance(value, list) else value)

    return ", ".join(f"{flag_name(name)} {shown(old)} ({label} {shown(new)})"
                     for name, old, new in differences)


def config_hash(config: TrainConfig | Mapping[str, object]) -> str:
    """A short hash of what a config computes (:data:`INCIDENTAL_FIELDS` left out): equal for
    two runs of the same experiment wherever and however they ran."""
    values = config_to_dict(config) if isinstance(config, TrainConfig) else dict(config)
    kept = {k: _plain(v) for k, v in sorted(values.items()) if k not in INCIDENTAL_FIELDS}
    text = json.dumps(kept, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


__all__ = ["config_differences", "config_hash", "describe_differences"]
